"""The guard library on the demo models and a real database: the policy's tiers, incidents
raised by the real alert rules, triagers' orders and their trail, the state cache, uncalibrated
versions, request rows, publishing (JSON Lines and a real Redis stream) and what it imports."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from monitor.attacks import pgd
from monitor.errors import ConfigError, RobmonError
from monitor.guard import Guard, GuardPolicy
from monitor.guard.sources import override_history, overrides_in_force, set_override
from tests.conftest import run_robmon
from tests.ingest.lines import png_b64, record, write_lines
from tests.stores import context_for

ATTACKER, BENIGN = "203.0.113.9", "10.0.0.4"


def robmon(*args: str):
    result = run_robmon(*args)
    assert result.code == 0, result.stderr
    return result


@pytest.fixture
def ctx(demo_home: Path):
    settings, db, registry = context_for(demo_home)
    yield settings, db, registry
    db.dispose()


@pytest.fixture
def adversarial(ctx, digits) -> torch.Tensor:
    _, _, registry = ctx
    model = registry.load(registry.resolve("models:/digits-cnn/1")).module
    return pgd(model, digits.x[300:360], digits.y[300:360], 0.3, seed=0)


def guard(ctx, **policy) -> Guard:
    settings, db, _ = ctx
    return Guard("models:/digits-cnn/1", settings=settings, db=db, policy=GuardPolicy(**policy))


def verdicts(g: Guard, images: torch.Tensor, source: str) -> Counter:
    return Counter(v.verdict for v in g.check_batch(images, [source] * len(images)))


def open_incident(tmp_path: Path, adversarial: torch.Tensor, digits) -> dict:
    """An incident for ATTACKER, raised by ingesting its traffic and evaluating the rules."""
    lines = [record(a, source=ATTACKER, rid=f"a{i}", ts=_now()) for i, a in enumerate(adversarial)]
    lines += [record(digits.x[i], source=BENIGN, rid=f"b{i}", ts=_now()) for i in range(60)]
    robmon("ingest", str(write_lines(tmp_path / "traffic.jsonl", lines)))
    robmon("alerts", "evaluate")
    [incident] = robmon("alerts", "list", "--json").json()
    assert incident["source"] == ATTACKER
    return incident


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


# -- policy -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            {"refuse": "maybe"},
            "guard.refuse is one of strong, combined, squeeze, none, not 'maybe'",
        ),
        ({"refuse": "low_confidence"}, "guard.refuse is one of"),
        ({"incident_action": "allow"}, "guard.incident_action is one of refuse, review"),
        ({"cache_seconds": True}, "guard.cache_seconds is a number of seconds"),
        ({"cache_seconds": -1}, "guard.cache_seconds is a number of seconds"),
        ({"publish": 3}, "guard.publish is a file"),
        ({"refuse_on": "strong"}, "unknown key guard.refuse_on"),
    ],
)
def test_a_bad_guard_table_is_one_sentence(table: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        GuardPolicy.from_table(table)
    assert "\n" not in str(info.value)


def test_tiers_decide_as_the_policy_says(ctx, digits, adversarial) -> None:
    clean = digits.x[:60]
    lenient = guard(ctx, refuse="none", review="none")
    assert verdicts(lenient, adversarial, "x") == Counter(allow=60)
    strict = guard(ctx, refuse="combined", review="squeeze")
    attacked, benign = verdicts(strict, adversarial, "x"), verdicts(strict, clean, "y")
    assert attacked["refuse"] >= 40 and benign["refuse"] <= 6, (attacked, benign)
    # the default: the strong tier refuses, the combined detector sends to review
    default = verdicts(guard(ctx), adversarial, "x")
    assert default["review"] + default["refuse"] == attacked["refuse"]  # same combined flags
    one = next(v for v in strict.check_batch(adversarial, ["x"] * 60) if v.verdict == "refuse")
    assert one.predicted is None and one.reason.startswith("combined detector tier")
    assert "combined_suspicious" in one.flags
    [fine] = guard(ctx).check_batch(clean[:1], ["y"])
    assert fine.verdict == "allow" and fine.predicted == int(digits.y[0])
    assert fine.reason == "no detector flag, no incident" and 0.9 < fine.confidence <= 1


# -- incidents, orders, cache ---------------------------------------------------------------------


def test_an_open_incident_refuses_its_source_until_marked_false_positive(
    ctx, digits, adversarial, tmp_path
) -> None:
    incident = open_incident(tmp_path, adversarial, digits)
    g = guard(ctx, cache_seconds=0)
    clean = digits.x[100:110]
    refused = g.check_batch(clean, [ATTACKER] * 10)
    assert {v.verdict for v in refused} == {"refuse"}
    assert f"open {incident['severity']} incident {incident['id']}" in refused[0].reason
    assert verdicts(g, clean, BENIGN)["refuse"] == 0
    reviewing = guard(ctx, cache_seconds=0, incident_action="review")
    assert verdicts(reviewing, clean, ATTACKER) == Counter(review=10)
    above = "critical" if incident["severity"] != "critical" else None
    if above:  # an incident below the chosen severity does not act
        assert verdicts(guard(ctx, incident_severity=above), clean, ATTACKER)["refuse"] == 0
    robmon("alerts", "false-positive", str(incident["id"]), "--by", "ana")
    assert verdicts(g, clean, ATTACKER)["refuse"] == 0


def test_orders_beat_the_policy_and_leave_a_trail(ctx, digits, adversarial, tmp_path) -> None:
    _, db, _ = ctx
    incident = open_incident(tmp_path, adversarial, digits)
    g = guard(ctx, cache_seconds=0)
    clean = digits.x[100:105]
    set_override(db, BENIGN, "refuse", "bo", "scraping")
    set_override(db, ATTACKER, "allow", "ana", "our red team", alert_id=incident["id"])
    [b] = g.check_batch(clean[:1], [BENIGN])
    assert b.verdict == "refuse" and b.reason.endswith("source on refuse by bo (scraping)")
    assert verdicts(g, adversarial, ATTACKER) == Counter(allow=60)
    assert [(o.source, o.action) for o in overrides_in_force(db)] == [
        (BENIGN, "refuse"),  # by source
        (ATTACKER, "allow"),
    ]
    set_override(db, BENIGN, "clear", "bo")
    assert verdicts(g, clean, BENIGN)["refuse"] == 0
    assert [o.action for o in override_history(db, BENIGN)] == ["clear", "refuse"]
    assert [o.source for o in overrides_in_force(db)] == [ATTACKER]
    events = robmon("alerts", "show", str(incident["id"]), "--json").json()["events"]
    assert ("ana", "guard-allow") in [(e["actor"], e["action"]) for e in events]
    with pytest.raises(RobmonError, match="unknown guard order 'block'"):
        set_override(db, BENIGN, "block", "bo")
    with pytest.raises(RobmonError, match="say who you are"):
        set_override(db, BENIGN, "refuse", " ")


def test_source_state_is_read_from_memory_for_cache_seconds(ctx, digits) -> None:
    _, db, _ = ctx
    g = guard(ctx, cache_seconds=3600)
    assert verdicts(g, digits.x[:3], BENIGN)["refuse"] == 0
    set_override(db, BENIGN, "refuse", "bo")
    assert verdicts(g, digits.x[:3], BENIGN)["refuse"] == 0  # cached: not read again yet
    g.states.refresh_now()
    assert verdicts(g, digits.x[:3], BENIGN) == Counter(refuse=3)


def test_an_uncalibrated_version_answers_as_the_policy_says(ctx, digits) -> None:
    from sqlalchemy import delete

    from monitor.db.models import DetectorCalibration

    _, db, _ = ctx
    with db.session() as s:
        s.execute(delete(DetectorCalibration).where(DetectorCalibration.model_name == "digits-cnn"))
    for choice in ("allow", "review", "refuse"):
        g = guard(ctx, uncalibrated=choice)
        [v] = g.check_batch(digits.x[:1], ["x"])
        assert v.verdict == choice
        assert (choice == "allow") == ("no detector calibration" not in v.reason)


# -- request rows and publishing ------------------------------------------------------------------


def test_rows_take_the_record_inputs_and_refuse_the_rest(ctx, digits, tmp_path) -> None:
    published = tmp_path / "guarded.jsonl"
    g = guard(ctx, publish=str(published))
    image = digits.x[0]
    answers = g.check_rows(
        [
            {"source": "s1", "id": "png", "png_b64": png_b64(image)},
            {"source": "s1", "id": "obj", "input": {"array": image[0].tolist()}},
            {"source": "s1", "id": "path", "input": {"path": "/etc/passwd"}},
            {"id": "nosource", "array": image[0].tolist()},
            {"source": "s1", "id": "bad", "array": "nope"},
        ]
    )
    g.close()
    by_id = {v.client_id: v for v in answers}
    assert by_id["png"].verdict == "allow" and by_id["png"].predicted == int(digits.y[0])
    assert by_id["obj"].predicted == int(digits.y[0])
    assert "input.path is refused here" in by_id["path"].reason
    assert by_id["nosource"].source is None
    assert "missing field: source" in by_id["nosource"].reason
    assert by_id["bad"].verdict == "refuse" and by_id["bad"].predicted is None
    assert by_id["bad"].confidence is None
    records = [json.loads(line) for line in published.read_text().splitlines()]
    assert [r["id"].partition("~")[0] for r in records] == ["path", "nosource", "bad", "png", "obj"]
    assert "source" not in records[1] and records[2]["input"] == {"array": "nope"}  # as sent
    assert records[3]["guard"]["verdict"] == "allow" and records[3]["version"] == "1"
    result = robmon("ingest", str(published), "--json").json()
    assert result["scored"] == 2 and result["dead_letters"] == 3  # nothing lost
    letters = robmon("dead-letters", "list", "--json").json()["dead_letters"]
    assert sorted(str(d["source"]) for d in letters) == ["None", "s1", "s1"]


def test_a_refused_source_learns_nothing_and_repeated_ids_stay_apart(ctx, digits) -> None:
    _, db, _ = ctx
    set_override(db, "s9", "refuse", "bo")
    g = guard(ctx, cache_seconds=0)
    answers = g.check_batch(digits.x[:3], ["s9"] * 3, ["same"] * 3)
    assert all(v.predicted is None and v.confidence is None for v in answers)
    assert all(v.scores["confidence"] > 0 for v in answers)  # kept for the record only
    assert [v.as_answer()["id"] for v in answers] == ["same"] * 3
    assert len({v.request_id for v in answers}) == 3


def test_non_json_numbers_are_published_as_readable_lines(ctx, tmp_path) -> None:
    published = tmp_path / "guarded.jsonl"
    g = guard(ctx, publish=str(published))
    [v] = g.check_rows([{"source": "s1", "array": [[float("nan")] * 8] * 8}])
    g.close()
    assert v.verdict == "refuse"
    [line] = published.read_text().splitlines()

    def no_constants(token: str):
        raise AssertionError(f"{token} is no JSON")

    record = json.loads(line, parse_constant=no_constants)
    assert record["source"] == "s1" and record["guard"]["verdict"] == "refuse"


def test_orders_name_sources_a_request_can_have(ctx, digits, adversarial, tmp_path) -> None:
    _, db, _ = ctx
    with pytest.raises(RobmonError, match="surrounding whitespace"):
        set_override(db, " 10.0.0.1", "refuse", "bo")
    with pytest.raises(RobmonError, match="has no order in force"):
        set_override(db, "10.0.0.1", "clear", "bo")
    incident = open_incident(tmp_path, adversarial, digits)
    with pytest.raises(RobmonError, match=f"incident {incident['id']} is not about 10.0.0.1"):
        set_override(db, "10.0.0.1", "refuse", "bo", alert_id=incident["id"])
    with pytest.raises(ConfigError, match="not a ftp URL"):
        GuardPolicy.from_table({"publish": "ftp://x/y"})


def test_request_rows_take_every_shape_mlflow_parses() -> None:
    import numpy as np
    import pandas as pd

    from monitor.guard.wrap import request_rows

    image = np.zeros((1, 8, 8))
    frame = pd.DataFrame([{"source": "a", "array": image.tolist()}, {"source": "b"}])
    assert [sorted(r) for r in request_rows(frame)] == [["array", "source"], ["source"]]
    columns = {"source": np.array(["a", "b"]), "array": np.zeros((2, 1, 8, 8))}
    assert [r["source"] for r in request_rows(columns)] == ["a", "b"]
    assert [list(r) for r in request_rows(np.zeros((3, 1, 8, 8)))] == [["array"]] * 3
    assert request_rows([{"source": "a"}, 5]) == [{"source": "a"}, {"input": 5}]


def test_records_published_to_a_redis_stream_reach_the_ingester(ctx, digits, stream) -> None:
    g = guard(ctx, publish=stream)
    g.check_batch(digits.x[:20], ["s1"] * 10 + ["s2"] * 10)
    g.close()
    assert g.publisher.published == 20
    robmon("ingest", "--redis-stream", stream, "--drain")
    _, db, _ = ctx
    from sqlalchemy import func, select

    from monitor.db.models import InputScore

    with db.session() as s:
        counts = dict(
            s.execute(
                select(InputScore.guard_verdict, func.count()).group_by(InputScore.guard_verdict)
            ).all()
        )
    assert sum(counts.values()) == 20 and None not in counts


def test_a_request_row_as_npy_is_what_the_guard_scored(ctx, digits) -> None:
    from monitor.guard.publish import npy_b64
    from monitor.ingest.records import Limits, decode_input

    decoded = decode_input({"npy_b64": npy_b64(digits.x[5])}, Limits(input_root=Path("/")))
    assert torch.equal(decoded, digits.x[5])
    assert base64.b64decode(npy_b64(digits.x[5]))[:6] == b"\x93NUMPY"


# -- the registry and imports ---------------------------------------------------------------------


def test_a_guarded_version_is_audited_as_its_parent(ctx) -> None:
    _, _, registry = ctx
    wrapped = robmon("guard", "wrap", "digits-cnn", "--review", "squeeze", "--json").json()
    assert wrapped["parent"] == "models:/digits-cnn/1" and wrapped["policy"]["review"] == "squeeze"
    guarded = registry.resolve(wrapped["guarded"])
    tags = registry.version_tags(guarded)
    assert tags["robustness.parent"] == "digits-cnn/1" and tags["robustness.method"] == "guard"
    assert json.loads(tags["robustness.guard.policy"])["review"] == "squeeze"
    assert registry.guarded_parent(guarded).uri == "models:/digits-cnn/1"
    loaded = registry.load(guarded)
    assert loaded.name == "digits-cnn/1" and hasattr(loaded, "module")


def test_cli_errors_are_one_sentence(ctx) -> None:
    missing = run_robmon("guard", "wrap", "no-such-model")
    assert (
        missing.code == 1 and missing.stderr.count("\n") == 1 and "no-such-model" in missing.stderr
    )
    no_by = run_robmon("guard", "refuse", "1.2.3.4")
    assert no_by.code == 2 and "--by" in no_by.stderr
    assert robmon("guard", "orders", "--json").json() == []
    robmon("guard", "refuse", "1.2.3.4", "--by", "bo", "--note", "n")
    [order] = robmon("guard", "orders", "--json").json()
    assert (order["source"], order["action"], order["actor"], order["note"]) == (
        "1.2.3.4",
        "refuse",
        "bo",
        "n",
    )


def test_the_guard_imports_with_torch_numpy_and_the_database_layer_alone() -> None:
    code = (
        "import sys, monitor.guard, monitor.guard.rows, monitor.guard.publish\n"
        "heavy = {'mlflow', 'dash', 'sklearn', 'pandas', 'redis'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_incident_state_and_orders_read_alike_on_sqlite_and_postgres(db_url, settings) -> None:
    from dataclasses import replace
    from datetime import UTC, datetime

    from monitor.db.models import Alert
    from monitor.db.session import open_database
    from monitor.guard.sources import read_states

    db = open_database(replace(settings, db_url=db_url, embedded_db=True))
    now = datetime.now(UTC)

    def incident(source: str, severity: str, status: str, sources: str | None = None) -> int:
        with db.session() as s:
            row = Alert(
                rule="flagged-rate", source=source, sources=sources, model_name="m",
                severity=severity, status=status, summary="-", evidence={},
                window_start=now, window_end=now,
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row.id

    high = incident("10.0.0.1", "high", "open")
    incident("10.0.0.1", "medium", "acknowledged")
    group = incident("group:1", "critical", "open", sources="10.0.0.2,10.0.0.3")
    incident("10.0.0.4", "critical", "false_positive")
    set_override(db, "10.0.0.5", "refuse", "bo")
    set_override(db, "10.0.0.6", "allow", "bo")
    set_override(db, "10.0.0.6", "clear", "bo")
    states = read_states(db)
    assert states["10.0.0.1"].incident.id == high  # the most severe of its open incidents
    assert states["10.0.0.2"].incident.id == group and states["10.0.0.3"].incident.id == group
    assert "10.0.0.4" not in states and "10.0.0.6" not in states  # closed; cleared
    assert states["10.0.0.5"].override.action == "refuse" and states["10.0.0.5"].incident is None
    db.dispose()
