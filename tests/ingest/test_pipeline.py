"""The ingester against the demo registry (real models, real calibrations) and a real database."""

import json
import subprocess
import sys
from pathlib import Path

import torch
from sqlalchemy import delete, func, select

from monitor.attacks import fgsm
from monitor.db.models import DeadLetter, DetectorCalibration, InputScore
from tests.ingest.lines import record, write_lines


def _count(db, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def _db():
    from monitor.config import load_settings
    from monitor.db.session import open_database

    return open_database(load_settings())


def test_scores_records_and_dead_letters_then_resumes(
    demo_home, demo_registry, digits, robmon, tmp_path: Path
) -> None:
    model = demo_registry.load(demo_registry.resolve("digits-cnn")).module
    adversarial = fgsm(model, digits.x[:40], digits.y[:40], 0.1)
    lines = [record(digits.x[i], source=f"10.0.0.{i % 3}", rid=f"c{i}") for i in range(90)]
    lines += [record(adversarial[i], source="10.6.6.6", rid=f"a{i}") for i in range(40)]
    bad = [
        '{"broken',
        record(digits.x[0], model="no-such-model"),
        record(inp={"array": [[0.5] * 28] * 28}),
        record(digits.x[1], source="10.0.0.1", rid="c1"),
    ]
    log = write_lines(tmp_path / "prod.jsonl", [*lines[:50], *bad, *lines[50:]])

    result = robmon("ingest", str(log), "--batch-size", "32", "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    assert summary["records"] == 134
    assert (summary["scored"], summary["dead_letters"], summary["duplicates"]) == (130, 3, 1)
    db = _db()
    assert _count(db, InputScore) == 130
    with db.session() as s:
        dead = s.execute(select(DeadLetter).order_by(DeadLetter.line_number)).scalars().all()
        assert [d.line_number for d in dead] == [51, 52, 53]
        assert "not valid JSON" in dead[0].reason and dead[0].excerpt == '{"broken'
        assert "not registered" in dead[1].reason and dead[1].source == "10.0.0.1"
        assert "takes inputs shaped 1×8×8" in dead[2].reason
        assert dead[0].origin == str(log.resolve()) and dead[0].byte_offset > 0
        rows = s.execute(select(InputScore)).scalars().all()
    assert all(r.calibration_id is not None and r.model_version == "1" for r in rows)
    attacker = [r for r in rows if r.source == "10.6.6.6"]
    benign = [r for r in rows if r.source != "10.6.6.6"]
    attacker_rate = sum(r.flagged for r in attacker) / len(attacker)
    benign_rate = sum(r.flagged for r in benign) / len(benign)
    assert attacker_rate > 0.3 and attacker_rate > 4 * benign_rate, (attacker_rate, benign_rate)
    assert summary["flagged"] == sum(r.flagged for r in rows)
    assert all(len(r.input_sha256) == 64 and r.divergences for r in rows)

    again = robmon("ingest", str(log), "--json").json()
    assert again["records"] == 0  # resumed at the committed position
    with log.open("a") as handle:
        handle.write(record(digits.x[5], source="10.0.0.9", rid="late") + "\n")
    assert robmon("ingest", str(log), "--json").json()["scored"] == 1
    assert _count(db, InputScore) == 131


def test_records_are_grouped_by_model_version(demo_home, digits, robmon, tmp_path) -> None:
    lines = [
        record(digits.x[i], model=m, version=v)
        for i in range(10)
        for m, v in (
            ("digits-cnn", None),
            ("digits-cnn", "2"),
            ("digits-logreg", None),
            ("digits-cnn", "champion"),
        )
    ]
    log = write_lines(tmp_path / "mixed.jsonl", lines)
    assert robmon("ingest", str(log), "--json").json()["scored"] == 40
    with _db().session() as s:
        counts = dict(
            s.execute(
                select(
                    InputScore.model_name + "/" + InputScore.model_version, func.count()
                ).group_by(InputScore.model_name, InputScore.model_version)
            ).all()
        )
    assert counts == {"digits-cnn/1": 20, "digits-cnn/2": 10, "digits-logreg/1": 10}


def test_standard_input_and_repeated_ids(demo_home, digits, tmp_path) -> None:
    text = "".join(record(digits.x[i], rid=f"s{i}") + "\n" for i in range(12))
    run = [sys.executable, "-m", "monitor", "ingest", "-", "--json"]
    first = subprocess.run(run, input=text, capture_output=True, text=True, check=True)
    second = subprocess.run(run, input=text, capture_output=True, text=True, check=True)
    assert json.loads(first.stdout)["scored"] == 12
    assert json.loads(second.stdout)["duplicates"] == 12
    assert json.loads(second.stdout)["scored"] == 0


def test_flagged_inputs_are_kept_as_png(demo_home, demo_registry, digits, robmon, tmp_path):
    model = demo_registry.load(demo_registry.resolve("digits-cnn")).module
    adversarial = fgsm(model, digits.x[:30], digits.y[:30], 0.3)
    log = write_lines(tmp_path / "a.jsonl", [record(x, source="bad/actor") for x in adversarial])
    summary = robmon("ingest", str(log), "--keep-flagged", str(tmp_path / "kept"), "--json").json()
    kept = sorted((tmp_path / "kept").glob("*.png"))
    assert summary["flagged"] > 0 and len(kept) == summary["flagged"]
    assert all(p.name.startswith("bad_actor_") for p in kept)
    with _db().session() as s:
        paths = s.scalars(select(InputScore.kept_path).where(InputScore.flagged)).all()
    assert sorted(paths) == [str(p) for p in kept]


def test_uncalibrated_version_is_scored_unflagged_and_left_to_the_calibration_job(
    demo_home, demo_registry, digits, robmon, tmp_path
) -> None:
    from monitor.calibrate import run_due_calibrations
    from monitor.config import load_settings
    from monitor.db.models import CalibrationRequest

    db = _db()
    with db.session() as s:
        s.execute(delete(DetectorCalibration).where(DetectorCalibration.model_name == "digits-cnn"))
    model = demo_registry.load(demo_registry.resolve("digits-cnn")).module
    adversarial = fgsm(model, digits.x[:30], digits.y[:30], 0.3)
    lines = [record(x, source="bad", rid=f"a{i}") for i, x in enumerate(adversarial)]
    summary = robmon("ingest", str(write_lines(tmp_path / "a.jsonl", lines)), "--json").json()
    # scored at once, without flags, and no calibration ran in the ingester
    assert (summary["scored"], summary["flagged"], summary["uncalibrated"]) == (30, 0, 30)
    assert any("no detector calibration yet" in n for n in summary["notes"])
    assert _count(db, DetectorCalibration) == 1  # digits-logreg's only: none was made
    with db.session() as s:
        request = s.get_one(CalibrationRequest, ("digits-cnn", "1"))
        assert (request.status, request.attempts) == ("pending", 0)

    # the scheduler's job calibrates it; the next ingest flags with the new thresholds
    done = run_due_calibrations(db, demo_registry, load_settings())
    assert len(done) == 1 and "digits-cnn/1 calibrated" in done[0]
    with db.session() as s:
        assert s.get_one(CalibrationRequest, ("digits-cnn", "1")).status == "done"
    more = [record(x, source="bad", rid=f"b{i}") for i, x in enumerate(adversarial)]
    again = robmon("ingest", str(write_lines(tmp_path / "b.jsonl", more)), "--json").json()
    assert again["uncalibrated"] == 0 and again["flagged"] >= 8  # measured: 11 of 30


def test_failed_calibration_is_recorded_and_retried_with_backoff(
    demo_home, demo_registry, digits, robmon, tmp_path
) -> None:
    from monitor.architectures import digits_cnn
    from monitor.calibrate import retry_delay, run_due_calibrations
    from monitor.config import load_settings
    from monitor.db.models import CalibrationRequest
    from monitor.db.types import utcnow

    missing = str(tmp_path / "gone.npz")
    ref = demo_registry.register_torch(
        digits_cnn(), "broken-data", torch.rand(2, 1, 8, 8), tags={"robustness.dataset": missing}
    )
    log = write_lines(tmp_path / "a.jsonl", [record(digits.x[i], model=ref.name) for i in range(4)])
    assert robmon("ingest", str(log), "--json").json()["scored"] == 4
    db = _db()
    before = utcnow()
    done = run_due_calibrations(db, demo_registry, load_settings())
    assert "broken-data/1 failed" in done[0] and "gone.npz" in done[0]
    with db.session() as s:
        request = s.get_one(CalibrationRequest, ("broken-data", "1"))
        assert (request.status, request.attempts) == ("failed", 1)
        assert "gone.npz" in request.error
        assert request.next_attempt_at >= before + retry_delay(1)
    assert run_due_calibrations(db, demo_registry, load_settings()) == []  # not due yet
    assert [retry_delay(n).total_seconds() for n in (1, 2, 3, 30)] == [60, 120, 240, 6 * 3600]
    # ingestion goes on, unflagged
    more = write_lines(
        tmp_path / "b.jsonl", [record(digits.x[i], model=ref.name) for i in range(3)]
    )
    assert robmon("ingest", str(more), "--json").json()["uncalibrated"] == 3


def test_model_without_dataset_is_scored_without_flags(
    demo_home, demo_registry, digits, robmon, tmp_path
) -> None:
    from monitor.architectures import digits_cnn

    ref = demo_registry.register_torch(digits_cnn(), "untagged", torch.rand(2, 1, 8, 8))
    log = write_lines(tmp_path / "a.jsonl", [record(digits.x[i], model=ref.name) for i in range(5)])
    summary = robmon("ingest", str(log), "--json").json()
    assert summary["scored"] == 5 and summary["flagged"] == 0
    assert any("scored without flags" in n for n in summary["notes"])


def test_inputs_stats(demo_home, digits, robmon, tmp_path) -> None:
    lines = [record(digits.x[i], source="a", ts="2026-11-24T10:00:00Z") for i in range(6)]
    lines += [record(digits.x[i], source="b", ts="2026-11-25T10:00:00Z") for i in range(4)]
    robmon("ingest", str(write_lines(tmp_path / "a.jsonl", lines)))
    stats = {s["source"]: s for s in robmon("inputs", "stats", "--json").json()}
    assert (stats["a"]["count"], stats["b"]["count"]) == (6, 4)
    assert 0.5 < stats["a"]["mean_confidence"] <= 1.0
    recent = robmon("inputs", "stats", "--since", "2026-11-25T00:00:00Z", "--json").json()
    assert [s["source"] for s in recent] == ["b"]
    table = robmon("inputs", "stats")
    assert "flagged rate" in table.stdout and table.code == 0


def test_pipeline_on_postgresql(
    demo_home, postgres_url, digits, monkeypatch, robmon, tmp_path
) -> None:
    """COPY path, duplicate ids across runs, dead letters and resume on PostgreSQL."""
    monkeypatch.setenv("ROBMON_DB_URL", postgres_url)
    assert robmon("db", "upgrade").code == 0
    lines = [record(digits.x[i], source=f"p{i % 4}", rid=f"id{i}") for i in range(300)]
    first = write_lines(tmp_path / "one.jsonl", [*lines[:200], "{oops"])
    second = write_lines(tmp_path / "two.jsonl", lines[150:])  # 50 repeats, 100 new
    a = robmon("ingest", str(first), "--json").json()
    b = robmon("ingest", str(second), "--batch-size", "64", "--json").json()
    assert (a["scored"], a["dead_letters"]) == (200, 1)
    assert (b["scored"], b["duplicates"]) == (100, 50)
    stats = robmon("inputs", "stats", "--json").json()
    assert sum(s["count"] for s in stats) == 300
    assert robmon("ingest", str(first), "--json").json()["records"] == 0


def test_a_failed_commit_stops_the_run_and_nothing_after_it_lands(
    demo_home, digits, robmon, tmp_path: Path
) -> None:
    """Batches are committed on a writer thread while the next is scored: when a commit fails,
    the batches before it stay committed with their position, none after it is stored, and the
    next run picks up exactly there."""
    from sqlalchemy import text

    from monitor.db.models import IngestOffset

    lines = [record(digits.x[i], source=f"s{i}", rid=f"r{i}") for i in range(50)]
    lines[25] = record(digits.x[25], source="boom", rid="r25")  # in the third batch of 10
    log = write_lines(tmp_path / "prod.jsonl", lines)
    assert robmon("db", "upgrade").code == 0
    db = _db()
    with db.session() as s:
        s.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON input_scores WHEN NEW.source = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    failed = robmon("ingest", str(log), "--batch-size", "10")
    assert failed.code != 0 and "refused by the test" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    with db.session() as s:
        stored = s.scalars(select(InputScore.request_id)).all()
        offset = s.get(IngestOffset, str(log.resolve()))
        assert sorted(stored, key=lambda r: int(r[1:])) == [f"r{i}" for i in range(20)]
        assert offset.line_number == 20
        s.execute(text("DROP TRIGGER refuse"))
    again = robmon("ingest", str(log), "--batch-size", "10", "--json")
    assert again.code == 0 and again.json()["scored"] == 30
    with db.session() as s:
        assert sorted(s.scalars(select(InputScore.request_id)).all()) == sorted(
            f"r{i}" for i in range(50)
        )


def test_every_spelling_of_a_version_is_scored_by_its_calibrated_detector(
    demo_home, demo_registry, digits, robmon, tmp_path
) -> None:
    """Pentest 2026-11-29, finding 3: "01" (or 1, "1", the champion alias) is version 1 with
    version 1's calibration, never an uncalibrated "version 01"; digits of other scripts are
    refused."""
    from monitor.db.models import CalibrationRequest

    model = demo_registry.load(demo_registry.resolve("digits-cnn")).module
    adversarial = fgsm(model, digits.x[:30], digits.y[:30], 0.3)
    spellings = ["1", "01", "001", 1, "champion"]
    lines = [
        record(x, source=f"s{k}", version=spelling)
        for k, spelling in enumerate(spellings)
        for x in adversarial
    ]
    lines += [record(adversarial[0], source="arabic", version="٠١")]
    summary = robmon("ingest", str(write_lines(tmp_path / "v.jsonl", lines)), "--json").json()

    assert (summary["scored"], summary["uncalibrated"], summary["dead_letters"]) == (150, 0, 1)
    db = _db()
    with db.session() as s:
        rows = s.scalars(select(InputScore).order_by(InputScore.id)).all()
        reason = s.scalar(select(DeadLetter.reason))
    assert {(r.model_version, r.calibration_id is not None) for r in rows} == {("1", True)}
    assert _count(db, CalibrationRequest) == 0
    flags = [[r.flagged for r in rows if r.source == f"s{k}"] for k in range(len(spellings))]
    assert sum(flags[0]) >= 8 and all(f == flags[0] for f in flags)
    assert "not written in ASCII digits" in reason
