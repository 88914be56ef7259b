"""Scheduled audits against a real MLflow store and database: polls, sweeps, leases, failures,
kill -9 and SIGTERM, and `robmon serve`."""

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import delete, func, select

from monitor.architectures import digits_cnn
from monitor.db.models import Audit, InputScore, JobRun
from tests.ingest.lines import record

FAST_AUDIT = """
[audit]
limit = 60
eps = [0.1]

[watch]
lease_ttl = 8
retry_backoff = "0s"
max_attempts = 2
"""


@pytest.fixture
def context(demo_home):
    Path("robmon.toml").write_text(FAST_AUDIT)
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.jobs import JobContext
    from monitor.registry import Registry
    from monitor.watch import WatchSettings

    settings = load_settings()
    db = open_database(settings)
    yield JobContext(
        db=db,
        registry=Registry(settings),
        settings=settings,
        watch=WatchSettings.from_settings(settings),
        worker="scheduler@test#1",
    )
    db.dispose()


def audits(db, **match) -> list[Audit]:
    with db.session() as s:
        query = select(Audit).order_by(Audit.id)
        for key, value in match.items():
            query = query.where(getattr(Audit, key) == value)
        return list(s.scalars(query))


def wait_until(predicate, timeout: float = 400.0, process: subprocess.Popen | None = None) -> None:
    """Wait for the event itself, not for a guess of the machine's speed: the bound only
    catches a hang (on a busy 2-core machine the audits alone can take minutes), and a
    process that died ends the wait at once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before the event")
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def test_once_audits_every_model_and_says_why_one_is_skipped(context, robmon) -> None:
    from monitor.scheduler import run_once

    untagged = context.registry.register_torch(digits_cnn(), "no-dataset", torch.rand(2, 1, 8, 8))
    result = run_once(context)
    poll, ran = result["registry-poll"], result["audit-queue"]
    assert poll["status"] == ran["status"] == "ok"
    assert len(poll["enqueued"]) == 3
    assert next(line for line in poll["skipped"] if str(untagged) in line).endswith(
        "(or [audit].dataset)"
    )
    assert all("succeeded" in line for line in ran["audits"])
    assert {(a.model_name, a.model_version, a.status, a.trigger) for a in audits(context.db)} == {
        ("digits-cnn", "1", "succeeded", "registry-poll"),
        ("digits-cnn", "2", "succeeded", "registry-poll"),
        ("digits-logreg", "1", "succeeded", "registry-poll"),
    }
    again = run_once(context)  # nothing new: no audit runs twice
    assert again["registry-poll"]["enqueued"] == [] and len(audits(context.db)) == 3
    listing = robmon("jobs", "list", "--json").json()
    assert any("no-dataset/1 has no dataset" in line for line in listing["skipped"])
    last = {j["job"]: j for j in listing["jobs"]}
    assert last["registry-poll"]["last_status"] == "ok"
    assert last["audit-queue"]["last_detail"]["audits"] == []


def test_a_moved_alias_is_audited(context) -> None:
    from monitor.scheduler import run_once

    run_once(context)
    with context.db.session() as s:  # forget v2's audit, then point champion at it
        s.execute(delete(Audit).where(Audit.model_version == "2"))
    context.registry.set_alias("digits-cnn", "champion", "2")
    result = run_once(context)
    assert result["registry-poll"]["enqueued"] == ["queued: digits-cnn/2 as audit 4 (alias-moved)"]
    assert audits(context.db, model_version="2")[0].status == "succeeded"


def test_failing_audit_is_recorded_retried_with_backoff_and_others_still_run(context) -> None:
    from monitor.scheduler import run_once

    broken = context.registry.register_torch(
        digits_cnn(), "wrong-data", torch.rand(2, 1, 8, 8), tags={"robustness.dataset": "digits28"}
    )
    result = run_once(context)
    lines = result["audit-queue"]["audits"]
    assert sum("succeeded" in line for line in lines) == 3
    [failure] = [line for line in lines if str(broken) in line]
    assert "failed" in failure and "takes inputs shaped 1×8×8" in failure
    [failed] = audits(context.db, model_name="wrong-data")
    assert failed.status == "failed" and "takes inputs shaped" in failed.error
    second = run_once(context)  # retried (backoff 0 s), fails again: attempt 2 of 2
    assert "queued: wrong-data/1 (retry)" in second["registry-poll"]["enqueued"]
    third = run_once(context)
    assert any("gave up after 2 failed audits" in w for w in third["registry-poll"]["waiting"])
    assert len(audits(context.db, model_name="wrong-data")) == 2


def test_one_second_poll_audits_a_new_version_exactly_once(context) -> None:
    from monitor.scheduler import run_scheduler

    thread = threading.Thread(target=run_scheduler, args=(context, 1.0), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(audits(context.db, status="succeeded")) == 3)
        ref = context.registry.register_torch(
            digits_cnn(),
            "digits-cnn",
            torch.rand(2, 1, 8, 8),
            tags={"robustness.dataset": "digits"},
        )
        wait_until(
            lambda: (
                [a.status for a in audits(context.db, model_version=ref.version)] == ["succeeded"]
            )
        )
        time.sleep(3)  # several more polls
        assert len(audits(context.db, model_version=ref.version)) == 1
    finally:
        context.stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    from monitor.leases import current_holder

    assert current_holder(context.db, "scheduler") is None  # released on a clean stop


def _scheduler(*args: str, command: str = "scheduler") -> subprocess.Popen:
    """``robmon <command>`` with its output in a file (a pipe nobody reads fills up and stalls
    the process's logging, and with it the lease renewals)."""
    output = tempfile.TemporaryFile("w+")  # noqa: SIM115 (kept open with the process)
    process = subprocess.Popen(
        [sys.executable, "-m", "monitor", command, *args], stdout=output, stderr=subprocess.STDOUT
    )
    process.output = output
    return process


def _output(process: subprocess.Popen) -> str:
    process.output.seek(0)
    return process.output.read()


def _stop(*processes: subprocess.Popen) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=60)
        print(f"-- {process.args[3]} {process.pid} (exit {process.returncode}):")  # on failure
        print(_output(process))


def test_two_schedulers_on_one_database_make_one_audit(context) -> None:
    first, second = _scheduler("--poll-interval", "1"), _scheduler("--poll-interval", "1")
    try:
        wait_until(lambda: len(audits(context.db, status="succeeded")) == 3)
        ref = context.registry.register_torch(
            digits_cnn(),
            "digits-cnn",
            torch.rand(2, 1, 8, 8),
            tags={"robustness.dataset": "digits"},
        )
        wait_until(
            lambda: (
                [a.status for a in audits(context.db, model_version=ref.version)] == ["succeeded"]
            )
        )
        time.sleep(3)
        assert len(audits(context.db)) == 4
        with context.db.session() as s:
            holders = set(s.scalars(select(JobRun.holder).where(JobRun.job == "registry-poll")))
        assert len(holders) == 1  # the other process stood by
    finally:
        _stop(first, second)
    outputs = _output(first) + _output(second)
    assert "standing by" in outputs and "is the active scheduler" in outputs


SLOW_AUDIT = FAST_AUDIT.replace("limit = 60", "limit = 400\nsteps = 300\nattacks = ['pgd']")


def test_killed_scheduler_audit_is_marked_interrupted_and_run_again(context) -> None:
    Path("robmon.toml").write_text(
        SLOW_AUDIT.replace("[watch]", "[watch]\nmodels = ['digits-cnn']")
    )
    process = _scheduler("--poll-interval", "1")
    wait_until(lambda: audits(context.db, status="running"))
    [victim] = audits(context.db, status="running")
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert audits(context.db, id=victim.id)[0].status == "running"  # nobody marked it yet

    restarted = _scheduler("--poll-interval", "1")
    try:
        wait_until(lambda: audits(context.db, id=victim.id)[0].status == "interrupted")
        key = (victim.model_version, victim.config_hash)
        wait_until(
            lambda: any(
                (a.model_version, a.config_hash) == key
                and a.id != victim.id
                and a.status == "succeeded"
                for a in audits(context.db)
            ),
            timeout=180,
        )
    finally:
        _stop(restarted)
    assert "stopped before finishing" in audits(context.db, id=victim.id)[0].error


def test_sigterm_ends_the_running_audit_as_interrupted(context) -> None:
    Path("robmon.toml").write_text(
        SLOW_AUDIT.replace("[watch]", "[watch]\nmodels = ['digits-cnn']")
    )
    process = _scheduler("--poll-interval", "1")
    wait_until(lambda: audits(context.db, status="running"))
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    assert process.returncode == 0 and time.monotonic() - started < 30
    statuses = {a.status for a in audits(context.db)}
    assert "running" not in statuses and "interrupted" in statuses


def test_serve_runs_scheduler_and_ingester_until_sigterm(context, digits, tmp_path) -> None:
    log = tmp_path / "prod.jsonl"
    log.write_text("")
    Path("robmon.toml").write_text(FAST_AUDIT + f'\n[ingest]\npaths = ["{log}"]\n')
    process = _scheduler("--poll-interval", "1", command="serve")
    try:
        with log.open("a") as handle:
            handle.write("".join(record(digits.x[i]) + "\n" for i in range(20)))

        def scored() -> int:
            with context.db.session() as s:
                return s.scalar(select(func.count()).select_from(InputScore))

        wait_until(lambda: scored() == 20, process=process)
        wait_until(lambda: len(audits(context.db, status="succeeded")) == 3, process=process)
    finally:
        _stop(process)
    output = _output(process)
    assert process.returncode == 0, output
    assert "stopped cleanly" in output


def test_nightly_sweep_reaudits_watched_aliases_and_stale_audits(context) -> None:
    from datetime import timedelta

    from monitor.db.types import utcnow
    from monitor.scheduler import run_once

    run_once(context)
    context.registry.set_alias("digits-cnn", "challenger", "2")
    with context.db.session() as s:  # the logreg's audit is ten days old
        old = s.scalars(select(Audit).where(Audit.model_name == "digits-logreg")).one()
        old.finished_at = utcnow() - timedelta(days=10)
    result = run_once(context, sweep=True)["nightly-sweep"]
    reasons = sorted(line.rsplit("[", 1)[1].rstrip("]") for line in result["enqueued"])
    assert reasons[:2] == ["alias challenger", "alias champion"]
    assert reasons[2].startswith("last audit ")
    swept = audits(context.db, trigger="nightly-sweep")
    assert {(a.model_name, a.model_version, a.status, a.error) for a in swept} == {
        ("digits-cnn", "1", "succeeded", None),
        ("digits-cnn", "2", "succeeded", None),
        ("digits-logreg", "1", "succeeded", None),
    }
    # the poll gives fast feedback (quick); the sweep, and so the headline score, is gate-grade
    from monitor.audit.config import stored_preset

    assert {stored_preset(a.config) for a in audits(context.db, trigger="registry-poll")} == {
        "quick"
    }
    assert {stored_preset(a.config) for a in swept} == {"standard"}


def test_watch_configuration_errors_name_the_key(demo_home, robmon) -> None:
    Path("robmon.toml").write_text("[watch]\nsweep = 'tonight'\n")
    result = robmon("scheduler", "--once")
    assert result.code == 1
    assert result.stderr.strip() == (
        "error: robmon.toml: watch.sweep is HH:MM or a five-field crontab line."
    )
    Path("robmon.toml").write_text("[watch.config.digits-cnn]\nattack = ['pgd']\n")
    assert "watch.config.digits-cnn.attack" in robmon("scheduler", "--once").stderr


def test_once_calibrates_a_version_the_ingester_met_uncalibrated(context, robmon) -> None:
    from monitor.calibrate import current_calibration, request_calibration
    from monitor.registry import ModelVersionRef
    from monitor.scheduler import run_once

    ref = context.registry.register_torch(
        digits_cnn(), "fresh", torch.rand(2, 1, 8, 8), tags={"robustness.dataset": "digits"}
    )
    assert request_calibration(context.db, ModelVersionRef(ref.name, ref.version))
    assert not request_calibration(context.db, ModelVersionRef(ref.name, ref.version))
    result = run_once(context)["detector-calibration"]
    assert result["status"] == "ok" and result["calibrations"][0].startswith("fresh/1 calibrated")
    assert current_calibration(context.db, "fresh", "1") is not None
    assert run_once(context)["detector-calibration"]["calibrations"] == []  # done: not again
    last = {j["job"]: j for j in robmon("jobs", "list", "--json").json()["jobs"]}
    assert last["detector-calibration"]["last_status"] == "ok"
