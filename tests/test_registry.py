"""The registry gateway against a real MLflow SQLite store holding the demo models."""

import time

import pytest
import torch

from monitor.classifiers import BlackBoxClassifier, TorchClassifier
from monitor.config import load_settings
from monitor.datasets import load_dataset
from monitor.errors import ModelNotFound, RegistryUnavailable
from monitor.registry import ModelVersionRef, Registry, parse_reference


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("digits-cnn", ("digits-cnn", None, None)),
        ("models:/digits-cnn/2", ("digits-cnn", "2", None)),
        ("models:/digits-cnn@champion", ("digits-cnn", None, "champion")),
        ("digits-cnn@challenger", ("digits-cnn", None, "challenger")),
    ],
)
def test_parse_reference(text, expected) -> None:
    assert parse_reference(text) == expected


def test_resolve_versions_aliases_and_bare_names(demo_registry: Registry) -> None:
    assert demo_registry.resolve("models:/digits-cnn/2") == ModelVersionRef("digits-cnn", "2")
    assert demo_registry.resolve("models:/digits-cnn@champion") == ModelVersionRef(
        "digits-cnn", "1", "champion"
    )
    # bare name: the champion alias when set ...
    assert demo_registry.resolve("digits-cnn").version == "1"
    # ... else the latest version
    demo_registry.delete_alias("digits-cnn", "champion")
    assert demo_registry.resolve("digits-cnn") == ModelVersionRef("digits-cnn", "2")
    assert demo_registry.resolve("digits-logreg") == ModelVersionRef("digits-logreg", "1")


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no-such-model", "no-such-model"),
        ("models:/digits-cnn/99", "version 99"),
        ("models:/digits-cnn@nope", "has no alias 'nope'"),
        ("models:/a/b/c", "is not a model reference"),
    ],
)
def test_unknown_references_are_one_sentence(demo_registry, reference, message) -> None:
    with pytest.raises(ModelNotFound, match=message) as info:
        demo_registry.resolve(reference)
    assert "\n" not in str(info.value)


def test_list_models_with_versions_and_aliases(demo_registry: Registry) -> None:
    models = {m.name: m for m in demo_registry.list_models()}
    assert set(models) == {"digits-cnn", "digits-logreg"}
    cnn = models["digits-cnn"]
    assert [v.version for v in cnn.versions] == ["1", "2"]
    assert cnn.aliases == {"champion": "1"}
    assert cnn.versions[0].aliases == ["champion"]
    assert cnn.versions[0].tags["robustness.dataset"] == "digits"


def test_pt2_model_loads_differentiable_and_refuses_mode_switch(demo_registry) -> None:
    model = demo_registry.load(demo_registry.resolve("digits-cnn"))
    assert isinstance(model, TorchClassifier)
    with pytest.raises(NotImplementedError):
        model.module.eval()
    data = load_dataset("digits")
    x = data.x[:37].clone().requires_grad_(True)  # a batch size unlike the input example's
    logits = model.module(x)
    assert logits.shape == (37, 10)
    torch.nn.functional.cross_entropy(logits, data.y[:37]).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert (model.labels(data.x) == data.y).float().mean() > 0.9


def test_pickle_format_loads_as_trainable_module_in_eval_mode(demo_registry) -> None:
    from monitor.architectures import digits_cnn

    module = digits_cnn()
    ref = demo_registry.register_torch(
        module, "pickled-cnn", torch.rand(2, 1, 8, 8), serialization_format="pickle"
    )
    loaded = demo_registry.load(ref)
    assert isinstance(loaded, TorchClassifier)
    assert loaded.module.training is False
    loaded.module.train()  # a pickled module can switch modes (adversarial training needs it)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(loaded.module.eval()(x), module(x), atol=1e-6)


def test_blackbox_returns_probabilities(demo_registry) -> None:
    model = demo_registry.load(demo_registry.resolve("digits-logreg"))
    assert isinstance(model, BlackBoxClassifier)
    assert model.layout == "flat"
    data = load_dataset("digits")
    probs = model.probabilities(data.x[:50])
    assert probs.shape == (50, 10)
    assert torch.allclose(probs.sum(1), torch.ones(50), atol=1e-4)
    assert (model.labels(data.x) == data.y).float().mean() > 0.9


def test_tags_are_written_on_the_version(demo_registry) -> None:
    ref = demo_registry.resolve("models:/digits-cnn/2")
    demo_registry.set_tags(ref, {"robustness.score": 12.5})
    assert demo_registry.version_tags(ref)["robustness.score"] == "12.5"


def test_surrogate_is_newest_torch_model_for_dataset(demo_registry) -> None:
    assert demo_registry.find_surrogate("digits", exclude="digits-logreg") == ModelVersionRef(
        "digits-cnn", "2"
    )
    with pytest.raises(ModelNotFound, match="pass --surrogate"):
        demo_registry.find_surrogate("cifar10")


def test_unreachable_tracking_server_fails_fast_with_one_sentence(home, monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    registry = Registry(load_settings())
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=r"http://127\.0\.0\.1:9 is unreachable"):
        registry.resolve("digits-cnn")
    assert time.monotonic() - started < 30
