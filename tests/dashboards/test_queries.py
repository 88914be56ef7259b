"""The dashboard's queries against real databases with known contents."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dashboards import queries
from monitor.alerts.lifecycle import apply_findings, transition
from monitor.alerts.rules import Finding
from monitor.alerts.settings import AlertSettings
from monitor.audit import store
from monitor.audit.checks import Check
from monitor.audit.measure import CellResult, Measurements, Probes
from monitor.db.session import open_database
from monitor.ingest import rollups
from monitor.ingest.store import ScoreTable, commit_batch

NOW = datetime.now(UTC).replace(microsecond=0)


def scores(rows: list[tuple[str, datetime, bool, float]]) -> ScoreTable:
    """(source, ts, flagged, confidence) -> a score table as the ingester writes it."""
    n = len(rows)
    return ScoreTable(
        {
            "received_at": [NOW] * n,
            "ts": [r[1] for r in rows],
            "source": [r[0] for r in rows],
            "model_name": ["m"] * n,
            "model_version": ["1"] * n,
            "request_id": [f"r{i}" for i in range(n)],
            "predicted": [1] * n,
            "confidence": [r[3] for r in rows],
            "margin": [0.5] * n,
            "entropy": [0.1] * n,
            "divergences": [{"bits:2": 0.1}] * n,
            "max_divergence": [0.1 + i / 100 for i in range(n)],
            "combined_score": [0.1] * n,
            "low_confidence": [r[3] < 0.8 for r in rows],
            "squeeze_suspicious": [r[2] for r in rows],
            "combined_suspicious": [False] * n,
            "strong_suspicious": [False] * n,
            "flagged": [r[2] for r in rows],
            "calibration_id": [None] * n,
            "input_sha256": ["0" * 64] * n,
            "origin": [None] * n,
            "kept_path": [None] * n,
        }
    )


@pytest.fixture
def db(db_url, settings):
    database = open_database(replace(settings, db_url=db_url, embedded_db=True))
    rows = (
        [("a", NOW - timedelta(hours=1), i < 5, 0.9) for i in range(10)]
        + [("b", NOW - timedelta(hours=30), i < 1, 0.7) for i in range(4)]
        + [("c", NOW - timedelta(days=10), False, 0.99) for i in range(2)]
    )
    table = scores(rows)
    commit_batch(database, table, [], None, lambda s, ids: rollups.record(s, table, ids))
    yield database
    database.dispose()


def _audit(
    db,
    version: str,
    accuracies: dict[float, float],
    config_hash: str = "h1",
    config: dict | None = None,
) -> int:
    audit_id = store.create(
        db,
        name="m",
        version=version,
        dataset="digits",
        config=config or {},
        config_hash=config_hash,
        trigger="cli",
    )
    cells = [
        CellResult(
            "pgd",
            "linf",
            eps,
            "white-box",
            10,
            1,
            acc,
            None,
            100,
            None,
            None,
            0.1,
            0,
            {0: (50, acc), 1: (50, acc / 2)},
        )
        for eps, acc in accuracies.items()
    ]
    measurements = Measurements(0.98, 100, 10, {0: (50, 1.0), 1: (50, 0.96)}, cells, Probes())
    store.save_success(
        db, audit_id, measurements, [Check("zero_gradients", "warning", "half")], 50.0, {}
    )
    return audit_id


def test_overview_volumes_come_from_the_rollups(db) -> None:
    [row] = queries.overview(db, {"m": "1"}, now=NOW)
    assert (row.volume_24h, row.volume_7d) == (10, 14)
    assert row.flagged_rate_24h == pytest.approx(0.5)
    assert row.flagged_rate_7d == pytest.approx(6 / 14)
    assert row.open_alerts == {} and row.score is None


def test_source_page_sorts_filters_and_paginates(db) -> None:
    rows, total = queries.source_page(db, sort="flagged_rate", descending=True)
    assert total == 3 and [r["source"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["flagged_rate"] == pytest.approx(0.5) and rows[0]["inputs"] == 10
    assert rows[1]["mean_confidence"] == pytest.approx(0.7)
    rows, total = queries.source_page(db, sort="inputs", descending=False, page=1, size=1)
    assert total == 3 and [r["source"] for r in rows] == ["b"]
    rows, total = queries.source_page(db, min_flagged_rate=0.3)
    assert [r["source"] for r in rows] == ["a"] and total == 1
    assert queries.source_page(db, search="b")[1] == 1
    assert queries.source_page(db, search="%")[1] == 0  # LIKE wildcards are escaped


def test_source_series_and_histogram_sample(db) -> None:
    series = queries.source_series(db, "a")
    assert sum(p["inputs"] for p in series) == 10 and sum(p["flagged"] for p in series) == 5
    sample = queries.score_sample(db, source="b")
    assert sample["confidence"] == [0.7] * 4
    assert len(queries.score_sample(db, limit=5)["divergence"]) == 5


def test_alerts_queue_order_filters_and_distributed_membership(db) -> None:
    start = NOW - timedelta(minutes=10)
    findings = [
        Finding("flagged-rate", "a", "m", "1", "medium", "a is odd", start, NOW, {}),
        Finding("probing", "b", "m", "1", "critical", "b probes", start, NOW, {}),
        Finding(
            "probing-distributed",
            "x1",
            "m",
            "1",
            "critical",
            "group",
            start,
            NOW,
            {"sources": ["x1", "a", "c"]},
        ),
    ]
    with db.session() as s:
        opened = apply_findings(s, findings, AlertSettings()).opened
    rows, total = queries.alert_page(db, status="active")
    assert total == 3 and [r["severity"] for r in rows] == ["critical", "critical", "medium"]
    assert queries.alert_page(db, rule="probing")[1] == 1
    assert queries.alert_page(db, source="c")[1] == 1  # named in the group's evidence
    transition(db, opened[0], "resolve", "ana")
    assert queries.alert_page(db, status="active")[1] == 2
    assert queries.alert_page(db, status="resolved")[0][0]["source"] == "a"
    rows, _ = queries.source_page(db)
    counts = {r["source"]: r["open_alerts"] for r in rows}
    assert counts == {"a": 1, "b": 1, "c": 1}  # a and c through the distributed alert


# stored configurations as AuditConfig.canonical() writes them
GREY = {
    "dataset": "digits",
    "attacks": ["fgsm", "pgd"],
    "norms": ["linf"],
    "eps": {"linf": [0.1, 0.2]},
    "steps": 10,
    "restarts": 1,
    "limit": 100,
    "seed": 0,
    "surrogate": None,
}
COLOUR = {**GREY, "attacks": ["pgd"], "eps": {"linf": [2 / 255, 8 / 255]}, "steps": 20}
COLOUR |= {"limit": None, "dataset": "/data/photos/rgb224.npz"}


def test_newest_audit_per_configuration_of_each_version(db) -> None:
    first = _audit(db, "1", {0.1: 0.5, 0.2: 0.1}, config=GREY)
    _audit(db, "2", {0.1: 0.3, 0.2: 0.0}, config=GREY)  # re-audited below: replaced
    grey = _audit(db, "2", {0.1: 0.6, 0.2: 0.2}, config=GREY)
    colour = _audit(db, "2", {2 / 255: 0.9, 8 / 255: 0.7}, "h2", COLOUR)
    failed = store.create(
        db, name="m", version="2", dataset="digits", config=GREY, config_hash="h1", trigger="cli"
    )
    store.mark_ended(db, failed, "failed", "boom")  # newer, but failed: never shown
    audits = queries.newest_audits(db, "m")
    assert [(a.version, a.audit_id, a.config_hash) for a in audits] == [
        ("2", colour, "h2"),
        ("2", grey, "h1"),
        ("1", first, "h1"),
    ]
    assert {p["eps"]: p["robust_accuracy"] for p in audits[1].points} == {0.1: 0.6, 0.2: 0.2}
    assert {p["eps"]: p["robust_accuracy"] for p in audits[0].points} == {
        2 / 255: 0.9,
        8 / 255: 0.7,
    }
    assert (audits[0].clean_accuracy, audits[0].score) == (0.98, 50.0)
    assert audits[0].label == "PGD · L∞ 2/255, 8/255 · 20 steps · all images · rgb224.npz · h2"
    assert audits[1].label == (
        "quick: FGSM, PGD · L∞ 0.1, 0.2 · 10 steps · 100 images · digits · h1"
    )
    assert queries.newest_audits(db, "other") == []


def test_config_labels_name_every_setting_that_differs_from_the_defaults() -> None:
    both = {**GREY, "norms": ["l2", "linf"], "eps": {"l2": [0.5, 1.0], "linf": [1 / 255]}}
    both |= {"restarts": 2, "seed": 3, "adaptive": False, "surrogate": "digits-cnn/2"}
    assert queries.config_label(both, "digits", "0123456789abcdef") == (
        "FGSM, PGD · L2 0.5, 1 · L∞ 1/255 · 10 steps · 2 restarts · 100 images · "
        "naive (no BPDA/EOT) · surrogate digits-cnn/2 · seed 3 · digits · 01234567"
    )
    assert queries.config_label({}, "digits", "ab") == "attacks ? · all images · digits · ab"
    default = {**GREY, "eps": {"linf": [2 / 255, 4 / 255, 8 / 255]}, "input_kind": "colour"}
    assert queries.config_label(default, "digits", "ab").startswith(
        "quick: FGSM, PGD · L∞ 2/255, 4/255, 8/255 · colour default eps · 10 steps"
    )
    standard = {"attacks": ["apgd", "apgd-t", "square"], "chain": True, "restarts": 1,
                "queries": 5000, "query_probe": 500, "target_stop": 1, "target_screen": 25,
                "norms": ["linf"],
                "eps": {"linf": [0.1]}}  # fmt: skip
    assert queries.config_label(standard, "digits", "ab") == (
        "standard: APGD → APGD-T → SQUARE · L∞ 0.1 · 5000 queries · all images · digits · ab"
    )


def test_class_matrix_and_audit_page(db) -> None:
    first = _audit(db, "1", {0.1: 0.5, 0.2: 0.1})
    _audit(db, "2", {0.1: 0.6, 0.2: 0.2})
    _audit(db, "2", {0.1: 0.9}, config_hash="other")
    matrix = queries.class_matrix(db, first)
    assert matrix["columns"] == ["clean", "linf 0.1", "linf 0.2"]
    assert matrix["values"][1] == [0.96, 0.25, 0.05]
    rows, total = queries.audit_page(db, model="m", page=0, size=2)
    assert total == 3 and [r["model_version"] for r in rows] == ["2", "2"]
    assert queries.audit_page(db, status="failed")[1] == 0
    assert queries.audit_filter_values(db)["trigger"] == ["cli"]
