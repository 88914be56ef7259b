"""Input contracts and default eps grids, against a real MLflow store and real audits.

One trained digits CNN is logged three ways: (a) with its normalisation inside the module and
plain [0, 1] N×C×H×W input; (b) the raw network without normalisation, with the tag
robustness.input giving mean and std; (c) a pyfunc black box taking uint8 N×H×W×C with a uint8
signature. robmon adapts each to pixel space, so the audits agree.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from monitor.architectures import digits_cnn
from monitor.audit.config import DEFAULT_EPS, AuditConfig
from monitor.audit.runner import AuditRequest, make_plan, plan_from_row, run_audit
from monitor.contracts import (
    CONTRACT_TAG,
    InputContract,
    PixelAdapter,
    to_model_array,
)
from monitor.datasets import load_dataset
from monitor.errors import ConfigError, ModelIncompatible
from monitor.registry import DATASET_TAG
from monitor.training import train_classifier
from tests.conftest import copy_store, run_robmon
from tests.stores import context_for

LIMIT = 200
CONFIG = AuditConfig(dataset="digits", attacks=("fgsm", "pgd"), limit=LIMIT)  # default grid
DIGITS_TAGS = {DATASET_TAG: "digits"}


class Uint8ChannelsLast(mlflow.pyfunc.PythonModel):
    """A served model as teams have them: uint8 N×H×W×C in, class probabilities out."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net

    def predict(self, context, model_input, params=None):
        x = torch.from_numpy(np.asarray(model_input)).float().div(255.0).permute(0, 3, 1, 2)
        with torch.no_grad():
            return torch.softmax(self.net((x - 0.5) / 0.5), dim=1).numpy()


class Uint8Net(torch.nn.Module):
    """A torch module declared uint8 (its signature) that also runs on whole-number floats."""

    def __init__(self, net: torch.nn.Module, strict: bool = False) -> None:
        super().__init__()
        self.net, self.strict = net, strict

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.strict and x.dtype != torch.uint8:
            raise TypeError(f"expected uint8 pixels, got {x.dtype}")
        return self.net((x.float() / 255.0 - 0.5) / 0.5)


@pytest.fixture(scope="module")
def three_ways_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits-inside (a, pickle), digits-tagged (b, pt2), digits-uint8 (c, pyfunc)."""
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.registry import Registry

    home = tmp_path_factory.mktemp("contracts") / ".robmon"
    settings = load_settings({"ROBMON_HOME": str(home)})
    registry = Registry(settings)
    open_database(settings).dispose()  # the robmon database, migrated
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = digits_cnn()  # Standardize(0.5, 0.5) first, then the raw network
    train_classifier(model, train.x, train.y, epochs=8, lr=2e-3, seed=0)
    example = train.x[:2]
    registry.register_torch(
        model, "digits-inside", example, tags=DIGITS_TAGS, serialization_format="pickle"
    )
    raw = model[1:]
    tagged = {**DIGITS_TAGS, CONTRACT_TAG: json.dumps({"mean": [0.5], "std": [0.5]})}
    registry.register_torch(raw, "digits-tagged", (example - 0.5) / 0.5, tags=tagged)
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, 8, 8, 1))]))
    registry._log_and_register(
        "digits-uint8",
        "robmon-models",
        DIGITS_TAGS,
        lambda: mlflow.pyfunc.log_model(
            name="model",
            python_model=Uint8ChannelsLast(raw),
            signature=signature,
            registered_model_name="digits-uint8",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        ),
    )
    uint8_example = (example * 255).round().to(torch.uint8)
    for name, strict in (("digits-torch-uint8", False), ("digits-torch-uint8-only", True)):
        registry.register_torch(
            Uint8Net(raw, strict),
            name,
            uint8_example,
            tags=DIGITS_TAGS,
            serialization_format="pickle",
        )
    return home


@pytest.fixture
def context(home: Path, three_ways_store: Path):
    settings, db, registry = context_for(copy_store(three_ways_store, home))
    yield settings, db, registry
    db.dispose()


def _audit(context, reference: str, config: AuditConfig = CONFIG):
    _, db, registry = context
    return run_audit(db, registry, AuditRequest(reference, config)).detail


def _by_cell(detail, threat: str | None = None) -> dict[tuple[str, str, float], float]:
    return {
        (r.attack, r.norm, r.eps): r.robust_accuracy
        for r in detail.results
        if threat in (None, r.threat)
    }


def test_the_same_network_logged_three_ways_gives_the_same_audit(context) -> None:
    inside = _audit(context, "digits-inside")
    tagged = _audit(context, "digits-tagged")
    uint8 = _audit(context, "digits-uint8", replace(CONFIG, surrogate="digits-inside"))
    for detail in (inside, tagged, uint8):
        assert detail.status == "succeeded", detail.error
    assert inside.clean_accuracy > 0.9
    assert tagged.clean_accuracy == inside.clean_accuracy == uint8.clean_accuracy
    # the default grayscale grid, stated in the report with why
    assert sorted({r.eps for r in inside.results}) == [0.1, 0.2, 0.3]
    assert inside.run_info["eps"] == {
        "grid": {"linf": [0.1, 0.2, 0.3]},
        "why": "default for grayscale inputs (1 channel), as RobustBench/AutoAttack use",
    }
    # (a) and (b): white-box numbers within one sample of each other
    a, b = _by_cell(inside), _by_cell(tagged)
    assert a.keys() == b.keys() and len(a) == 6
    for cell in a:
        assert abs(a[cell] - b[cell]) * LIMIT <= 1, (cell, a[cell], b[cell])
    assert a[("pgd", "linf", 0.3)] < a[("pgd", "linf", 0.1)]
    # (c): transfer from (a), whose white-box examples it sees rounded to whole 0–255 values
    c = _by_cell(uint8)
    assert {r.threat for r in uint8.results} == {"transfer"}
    for cell in c:
        assert abs(c[cell] - a[cell]) * LIMIT <= 3, (cell, c[cell], a[cell])  # 2 measured
    # each report states the contract and where it came from
    contracts = [d.run_info["contract"] for d in (inside, tagged, uint8)]
    assert [(k["scale"], k["layout"], k["source"]) for k in contracts] == [
        ("unit", "nchw", "signature"),
        ("unit", "nchw", "tag"),
        ("uint8", "nhwc", "signature"),
    ]
    assert contracts[1]["mean"] == [0.5] and contracts[1]["std"] == [0.5]
    assert contracts[2]["size"] == [8, 8] and contracts[2]["channels"] == 1
    assert all("warning" not in k for k in contracts)
    # MLflow write-back logs the contract as params
    _, _, registry = context
    params = registry.client.get_run(uint8.mlflow_run_id).data.params
    assert params["input.scale"] == "uint8" and params["input.layout"] == "nhwc"
    assert params["input.source"] == "signature"


def test_the_classifier_keeps_pixel_space_shapes(context) -> None:
    _, _, registry = context
    uint8 = registry.load(registry.resolve("digits-uint8"))
    tagged = registry.load(registry.resolve("digits-tagged"))
    assert uint8.input_shape == (1, 8, 8) and tagged.input_shape == (1, 8, 8)
    assert isinstance(tagged.module, PixelAdapter)
    assert uint8.contract.scale == "uint8" and uint8.layout == "nhwc"


def test_a_uint8_torch_module_keeps_its_gradients(context, caplog) -> None:
    """Declared uint8 by its signature: white-box through straight-through rounding when it
    takes floats; a black box (with a warning) when it refuses them."""
    from monitor.classifiers import BlackBoxClassifier, TorchClassifier

    _, _, registry = context
    loaded = registry.load(registry.resolve("digits-torch-uint8"))
    assert isinstance(loaded, TorchClassifier) and loaded.module.round_to_integers
    assert loaded.contract.scale == "uint8" and loaded.contract.source == "signature"
    only = registry.load(registry.resolve("digits-torch-uint8-only"))
    assert isinstance(only, BlackBoxClassifier) and np.dtype(only.dtype) == np.uint8
    assert "takes uint8 tensors only, so it is audited as a black box" in caplog.text
    inside, uint8 = _audit(context, "digits-inside"), _audit(context, "digits-torch-uint8")
    assert uint8.clean_accuracy == inside.clean_accuracy
    # a module declared uint8 may refuse floats: it gets a transfer baseline beside white-box
    assert {r.threat for r in uint8.results} == {"white-box", "transfer"}
    a, u = _by_cell(inside), _by_cell(uint8, "white-box")
    for cell in a:  # whole-number inputs: a few samples apart at most
        assert abs(u[cell] - a[cell]) * LIMIT <= 3, (cell, u[cell], a[cell])
    assert u[("pgd", "linf", 0.1)] < 0.7  # the gradients got through
    data = load_dataset("digits").head(LIMIT)  # the black box gets rounded uint8 arrays
    assert int((only.labels(data.x) == data.y).sum()) == round(inside.clean_accuracy * LIMIT)


def test_a_wrong_contract_says_to_check_it(context, home: Path) -> None:
    (home.parent / "robmon.toml").write_text('[input."digits-uint8"]\nscale = "unit"\n')
    from monitor.config import load_settings
    from monitor.registry import Registry

    _, db, _ = context
    registry = Registry(load_settings())
    config = AuditConfig(
        dataset="digits", attacks=("fgsm",), eps=(0.1,), limit=LIMIT, surrogate="digits-inside"
    )
    # the model takes 0–255; told [0, 1], it sees nearly black images
    detail = run_audit(db, registry, AuditRequest("digits-uint8", config)).detail
    assert detail.clean_accuracy <= 0.15
    contract = detail.run_info["contract"]
    assert contract["source"] == "config" and contract["scale"] == "unit"  # over the signature
    assert contract["warning"] == (
        f"clean accuracy {detail.clean_accuracy:.3f} is near chance for 10 classes: check the "
        f"input contract of digits-uint8/1 (scale, layout, mean and std; tag {CONTRACT_TAG}), "
        "which is now [0, 1], N×H×W×C, 1×8×8 (from robmon.toml)."
    )
    shown = run_robmon("audits", "show", str(detail.id))
    assert shown.code == 0, shown.stderr
    assert "Input: [0, 1], N×H×W×C, 1×8×8 (from robmon.toml)" in shown.stdout
    assert "Eps grid: linf 0.1 (given with --eps or an [audit] eps)" in shown.stdout
    assert "Check: clean accuracy" in shown.stdout
    as_json = run_robmon("audits", "show", str(detail.id), "--json").json()
    assert as_json["run_info"]["contract"]["warning"] == contract["warning"]


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ('{"scale": "uint8", "colour": "rgb"}', "has an unknown key 'colour'"),
        ('{"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]}', "mean has 3 values but the input"),
        ('{"mean": [0.5], "std": [0]}', "every std must be positive"),
        ('{"scale": 255', "is not valid JSON"),
        ('{"layout": "chw"}', "layout must be nchw or nhwc, not 'chw'"),
        ('{"scale": "uint8", "mean": [0.5], "std": [0.5]}', "cannot go with scale uint8"),
    ],
)
def test_an_invalid_tag_is_one_sentence(context, tag: str, message: str) -> None:
    _, _, registry = context
    ref = registry.resolve("digits-inside")
    registry.set_tags(ref, {CONTRACT_TAG: tag})
    with pytest.raises(ModelIncompatible) as info:
        registry.load(ref)
    text = str(info.value)
    assert message in text
    assert text.count(". ") == 0 and text.endswith(".")
    assert f"the tag {CONTRACT_TAG} of digits-inside/1" in text


def test_an_invalid_config_entry_names_the_table(context, home: Path) -> None:
    (home.parent / "robmon.toml").write_text('[input."digits-inside"]\nstd = [-1.0]\n')
    from monitor.config import load_settings
    from monitor.registry import Registry

    registry = Registry(load_settings())
    with pytest.raises(ConfigError, match=r'robmon.toml \[input."digits-inside"\]: every std'):
        registry.load(registry.resolve("digits-inside"))


def test_default_grids_by_input_kind(context, tmp_path: Path) -> None:
    grey = AuditConfig(dataset="digits", norms=("linf", "l2"))
    assert grey.eps_grid() == {"linf": [0.1, 0.2, 0.3], "l2": [0.5, 1.0, 2.0]}
    rng = np.random.default_rng(0)
    colour_npz = tmp_path / "colour.npz"
    np.savez(colour_npz, x=rng.random((4, 3, 8, 8), dtype=np.float32), y=np.arange(4))
    _, _, registry = context
    plan = make_plan(registry, "digits-inside", AuditConfig(str(colour_npz), norms=("linf", "l2")))
    assert plan.config.input_kind == "colour"
    assert plan.config.eps_grid() == {
        "linf": list(DEFAULT_EPS["colour"]["linf"]),
        "l2": [0.125, 0.25, 0.5],
    }
    assert plan.config.eps_for("linf") == (2 / 255, 4 / 255, 8 / 255)
    assert plan.config.eps_why() == (
        "default for colour inputs (3 channels), as RobustBench/AutoAttack use"
    )
    # --eps still overrides, and the kind no longer matters to the hash
    given = make_plan(registry, "digits-inside", AuditConfig(str(colour_npz), eps=(0.01,)))
    assert given.config.eps_grid() == {"linf": [0.01]}
    assert "input_kind" not in given.config.canonical()


@pytest.mark.parametrize(
    "config",
    [
        AuditConfig(dataset="digits", norms=("linf", "l2")),
        AuditConfig(dataset="cifar.npz", norms=("linf", "l2"), input_kind="colour"),
        AuditConfig(dataset="digits", norms=("linf", "l2"), eps=(0.05, 0.1, 0.2)),
    ],
)
def test_a_queued_audit_is_rebuilt_with_the_same_hash(config: AuditConfig) -> None:
    stored = json.loads(json.dumps(config.canonical()))  # as the database hands it back
    rebuilt = plan_from_row("m", "1", stored).config
    assert rebuilt.hash() == config.hash()
    assert rebuilt.eps_grid() == config.eps_grid()


def test_explicit_eps_audits_keep_their_hash() -> None:
    """The hash of an explicit-grid audit from before input kinds existed."""
    config = AuditConfig(dataset="digits", eps=(0.05, 0.1, 0.2), limit=150)
    assert config.hash() == "b82cd3ec2ef6ba8a65a26cee29c2f88ec2763d1f6a08c8589d37e1df2028153c"


def test_uint8_adapter_rounds_but_keeps_gradients() -> None:
    """A torch module declared uint8 gets whole 0–255 values; gradients pass straight through."""
    seen: list[torch.Tensor] = []

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.detach())
            return x.flatten(1)[:, :2] * torch.tensor([1.0, -1.0])

    contract = InputContract(scale="uint8", layout="nhwc")
    adapter = PixelAdapter(Probe(), contract, round_to_integers=True)
    x = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    adapter(x).sum().backward()
    fed = seen[0]
    assert fed.shape == (2, 4, 5, 3)
    assert torch.equal(fed, fed.round()) and fed.min() >= 0 and fed.max() <= 255
    expected = to_model_array(x.detach().numpy(), contract, np.dtype(np.uint8))
    assert np.array_equal(fed.numpy(), expected.astype(np.float32))
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_defended_version_of_a_configured_model_takes_pixels(context, home: Path) -> None:
    """[input."NAME"] declares the raw network's normalisation; robmon defend wraps the adapted
    parent, so the new version of the same name takes pixels and is not normalised twice."""
    (home.parent / "robmon.toml").write_text('[input."digits-tagged"]\nmean = [0.5]\nstd = [0.5]\n')
    from monitor.config import load_settings
    from monitor.harden.lineage import defend
    from monitor.harden.transforms import DefendedModel
    from monitor.registry import Registry

    _, db, _ = context
    registry = Registry(load_settings())
    derived = defend(db, registry, "digits-tagged", ["bits:6"], audit=replace(CONFIG, limit=60))
    child = registry.load(derived.child)
    assert child.contract.is_identity and isinstance(child.module, DefendedModel)
    assert registry.load(derived.parent).contract.mean == (0.5,)  # the parent keeps its contract
    # 6 bits barely change the digits: the child is as accurate as its parent, not near chance
    assert derived.child_audit.clean_accuracy == pytest.approx(
        derived.parent_audit.clean_accuracy, abs=0.04
    )
    assert derived.child_audit.clean_accuracy > 0.9


def test_a_uint8_only_torch_module_is_attacked_by_transfer(context) -> None:
    """It refuses floats, so it is a black box: the plan finds it a surrogate as for pyfuncs."""
    only = _audit(context, "digits-torch-uint8-only", replace(CONFIG, attacks=("fgsm",)))
    assert only.status == "succeeded" and only.surrogate == "digits-tagged/1"  # takes floats
    assert {r.threat for r in only.results} == {"transfer"}
    assert only.clean_accuracy > 0.9


def test_a_changed_contract_is_a_new_audit(context) -> None:
    """The contract is part of the configuration: changing it audits again, changing it back
    reuses the first audit."""
    _, db, registry = context
    config = replace(CONFIG, attacks=("fgsm",), limit=60)
    ref = registry.resolve("digits-tagged")
    first = run_audit(db, registry, AuditRequest("digits-tagged", config))
    registry.set_tags(ref, {CONTRACT_TAG: json.dumps({"mean": [0.9], "std": [0.05]})})
    wrong = run_audit(db, registry, AuditRequest("digits-tagged", config))
    assert not wrong.reused and wrong.detail.id != first.detail.id
    assert wrong.detail.clean_accuracy != first.detail.clean_accuracy
    assert "mean 0.9 std 0.05" in wrong.detail.run_info["contract"]["text"]
    registry.set_tags(ref, {CONTRACT_TAG: json.dumps({"mean": [0.5], "std": [0.5]})})
    again = run_audit(db, registry, AuditRequest("digits-tagged", config))
    assert again.reused and again.detail.id == first.detail.id
