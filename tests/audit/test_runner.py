"""End-to-end audits of the demo models against a real MLflow store and real databases."""

import pytest
import torch
from torch import nn

from monitor.audit import store
from monitor.audit.config import AuditConfig
from monitor.audit.runner import AuditRequest, run_audit
from monitor.db.session import Database, create_db_engine, open_database
from monitor.errors import AuditError


@pytest.fixture
def database(db_url, demo_settings) -> Database:
    from dataclasses import replace

    db = open_database(replace(demo_settings, db_url=db_url, embedded_db=True))
    yield db
    db.dispose()


CONFIG = AuditConfig(dataset="digits", eps=(0.05, 0.1, 0.2), limit=150)


def _run(database, registry, reference, config=CONFIG, **kw):
    return run_audit(database, registry, AuditRequest(reference, config, **kw))


@pytest.mark.parametrize(
    ("reference", "threat"),
    [
        ("digits-cnn", "white-box"),
        ("models:/digits-cnn/2", "white-box"),
        ("digits-logreg", "transfer"),
    ],
)
def test_audit_of_every_demo_model(database, demo_registry, reference, threat) -> None:
    outcome = _run(database, demo_registry, reference)
    detail = outcome.detail
    assert not outcome.reused
    assert detail.status == "succeeded" and detail.error is None
    assert detail.clean_accuracy > 0.9 and detail.n_samples == 150
    assert {r.threat for r in detail.results} == {threat}
    assert len(detail.results) == 6
    by_cell = {(r.attack, r.eps): r for r in detail.results}
    for eps in (0.05, 0.1, 0.2):
        assert by_cell[("pgd", eps)].robust_accuracy <= by_cell[("pgd", 0.05)].robust_accuracy
    if threat == "white-box":
        assert by_cell[("pgd", 0.2)].robust_accuracy < 0.2
        for eps in (0.05, 0.1, 0.2):
            assert (
                by_cell[("pgd", eps)].robust_accuracy
                <= by_cell[("fgsm", eps)].robust_accuracy + 0.02
            )
    else:
        assert detail.surrogate == "digits-cnn/2"
    assert 0 <= detail.score <= 100
    assert {c.label for c in detail.per_class if c.threat == "clean"} == set(range(10))
    assert {c.name for c in detail.checks} >= {"pgd_weaker_than_fgsm", "zero_gradients"}
    assert [c.name for c in detail.checks if c.status == "warning"] == []
    assert set(detail.artifact_names) == {"robust_accuracy.png", "examples.png"}

    # MLflow write-back: a run with a metric per cell and the artifacts; tags on the version
    run = demo_registry.client.get_run(detail.mlflow_run_id)
    key = "robust_accuracy" if threat == "white-box" else "transfer_robust_accuracy"
    assert run.data.metrics[f"{key}.pgd.linf.eps_0.1"] == pytest.approx(
        by_cell[("pgd", 0.1)].robust_accuracy
    )
    assert run.data.params["config_hash"] == detail.config_hash
    artifacts = {a.path for a in demo_registry.client.list_artifacts(detail.mlflow_run_id)}
    assert artifacts == {"report.json", "robust_accuracy.png", "examples.png"}
    tags = demo_registry.version_tags(demo_registry.resolve(reference))
    assert tags["robustness.audit_id"] == str(detail.id)
    assert float(tags["robustness.score"]) == pytest.approx(detail.score, abs=1e-3)
    assert tags["robustness.status"] == "succeeded"
    assert "robustness.audited_at" in tags


def test_same_config_is_reused_unless_forced(database, demo_registry) -> None:
    first = _run(database, demo_registry, "digits-cnn").detail
    again = _run(database, demo_registry, "models:/digits-cnn@champion")
    assert again.reused and again.detail.id == first.id
    forced = _run(database, demo_registry, "digits-cnn", force=True)
    assert not forced.reused and forced.detail.id != first.id
    other = _run(
        database, demo_registry, "digits-cnn", AuditConfig(dataset="digits", eps=(0.1,), limit=150)
    )
    assert not other.reused


def test_fixed_seed_reproduces_the_numbers(database, demo_registry) -> None:
    a = _run(database, demo_registry, "digits-cnn").detail
    b = _run(database, demo_registry, "digits-cnn", force=True).detail
    assert [r.robust_accuracy for r in a.results] == [r.robust_accuracy for r in b.results]


def test_wrong_input_shape_is_recorded_as_failed(database, demo_registry) -> None:
    config = AuditConfig(dataset="digits28", eps=(0.1,), limit=20)
    with pytest.raises(AuditError, match="takes inputs shaped 1×8×8") as info:
        _run(database, demo_registry, "digits-cnn", config)
    [audit] = store.list_audits(database, status="failed")
    assert f"audit {audit.id} of digits-cnn/1 failed" in str(info.value)
    assert "the dataset is 1×28×28" in audit.error
    assert audit.finished_at is not None
    detail = store.get_audit(database, audit.id)
    assert detail.results == [] and detail.checks == []
    tags = demo_registry.version_tags(demo_registry.resolve("digits-cnn"))
    assert tags["robustness.status"] == "failed"
    # the claim was released: the same audit can be tried again
    with pytest.raises(AuditError):
        _run(database, demo_registry, "digits-cnn", config)


class NaNModel(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * float("nan")


def test_nan_logits_fail_the_audit(database, demo_registry) -> None:
    ref = demo_registry.register_torch(NaNModel(), "nan-model", torch.rand(2, 1, 8, 8))
    with pytest.raises(AuditError, match="NaN or infinite outputs on 20 of 20"):
        _run(
            database,
            demo_registry,
            str(ref.uri),
            AuditConfig(dataset="digits", eps=(0.1,), limit=20),
        )


def test_a_running_audit_is_not_started_twice(database, demo_registry) -> None:
    from monitor.audit.runner import make_plan

    plan = make_plan(demo_registry, "digits-cnn", CONFIG)
    holder = store.create(
        database,
        name="digits-cnn",
        version="1",
        dataset="digits",
        config=plan.config.canonical(),
        config_hash=plan.config_hash,
        trigger="scheduler",
    )
    with pytest.raises(store.AuditAlreadyActive, match=f"audit {holder} of digits-cnn/1"):
        _run(database, demo_registry, "digits-cnn")


def test_interruption_is_recorded(database, demo_registry) -> None:
    def interrupt(task, done, total):
        if done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_audit(database, demo_registry, AuditRequest("digits-cnn", CONFIG), interrupt)
    [audit] = store.list_audits(database)
    assert audit.status == "interrupted"
    assert store.get_audit(database, audit.id).results == []


def test_audit_rows_are_removed_with_their_audit(database, demo_registry) -> None:
    from sqlalchemy import delete, func, select

    from monitor.db.models import Audit, AuditResult

    detail = _run(database, demo_registry, "digits-cnn").detail
    with database.session() as s:
        s.execute(delete(Audit).where(Audit.id == detail.id))
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditResult)) == 0
    assert create_db_engine  # imported for symmetry with the migration tests
