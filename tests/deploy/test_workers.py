"""Audit workers claiming from PostgreSQL, with the model in an MLflow server: two workers never
run the same audit, and a killed worker's audit is finished by the other."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections import Counter

import pytest
from sqlalchemy import select

from monitor.db.models import Audit
from tests.deploy.conftest import free_port, robmon_process, wait_for

pytestmark = pytest.mark.timeout(420)


def audits() -> list[Audit]:
    from monitor.config import load_settings
    from monitor.db.session import open_database

    db = open_database(load_settings())
    try:
        with db.session() as s:
            rows = list(s.scalars(select(Audit).order_by(Audit.id)))
            s.expunge_all()
    finally:
        db.dispose()
    return rows


def test_two_workers_share_the_queue_and_finish_a_killed_workers_audit(
    deployment, served_model, robmon, tmp_path
):
    # three different audits, each long enough (a few seconds) to be killed mid-run
    for eps in ("0.05", "0.1", "0.2"):
        result = robmon("audit", served_model, "--eps", eps, "--steps", "40", "--queue", "--json")
        assert result.code == 0, result.stderr
        assert result.json()["queued"] is True
    again = robmon("audit", served_model, "--eps", "0.05", "--steps", "40", "--queue", "--json")
    assert again.json()["queued"] is False  # already queued: not twice

    args = ("worker", "--poll", "0.5", "--lease", "4")
    first = robmon_process(deployment, *args, "--name", "w1", log=tmp_path / "w1.log")
    second = robmon_process(deployment, *args, "--name", "w2", log=tmp_path / "w2.log")
    try:
        wait_for(
            lambda: any(a.status == "running" and a.worker.startswith("w1") for a in audits()),
            120,
            "w1 to claim an audit",
        )
        killed = next(a for a in audits() if a.status == "running" and a.worker.startswith("w1"))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        def all_done() -> bool:
            rows = audits()
            return sum(a.status == "succeeded" for a in rows) == 3 and not any(
                a.status in ("queued", "running") for a in rows
            )

        wait_for(all_done, 300, "three succeeded audits", interval=1.0)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=60)
    rows = audits()
    succeeded = [a for a in rows if a.status == "succeeded"]
    # each audit configuration succeeded exactly once: no two workers ran the same audit
    assert max(Counter(a.config_hash for a in succeeded).values()) == 1
    assert len(succeeded) == 3
    # the killed worker's audit was marked interrupted and finished by w2
    interrupted = next(a for a in rows if a.id == killed.id)
    assert interrupted.status == "interrupted"
    assert "lease expired" in interrupted.error
    redo = next(a for a in succeeded if a.config_hash == interrupted.config_hash)
    assert redo.worker.startswith("w2") and redo.trigger == "retry"
    assert redo.mlflow_run_id  # written back to the MLflow server


def test_worker_health_metrics_and_json_logs(deployment, served_model, robmon, tmp_path):
    result = robmon("audit", served_model, "--eps", "0.1", "--limit", "60", "--queue")
    assert result.code == 0, result.stderr
    port = free_port()
    log = tmp_path / "worker.log"
    worker = robmon_process(
        {**deployment, "ROBMON_LOG_FORMAT": "json"},
        "worker",
        "--poll",
        "0.5",
        "--metrics-port",
        str(port),
        log=log,
    )
    try:

        def scraped() -> str | None:  # the worker counts the audit after its MLflow write-back
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            except OSError:  # still starting
                return None
            done = 'robmon_audit_duration_seconds_count{outcome="succeeded"} 1.0'
            return text.decode() if done in text.decode() else None

        metrics = wait_for(scraped, 180, "the audit in the worker's metrics", interval=0.5)
        assert any(a.status == "succeeded" for a in audits())
        health = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10))
        assert health == {"status": "ok", "service": "ok", "database": "ok", "mlflow": "ok"}
        assert "robmon_open_alerts" in metrics or "robmon_webhook_failures_total" in metrics
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any("runs audit" in e["message"] for e in entries)
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)


def test_the_gate_queues_a_missing_audit_for_the_workers(
    deployment, served_model, robmon, tmp_path
):
    path = tmp_path / "policy.toml"
    path.write_text(
        '[audit]\ndataset = "digits"\neps = [0.1]\nlimit = 60\n'
        "[criteria]\nmin_clean_accuracy = 0.5\n"
    )
    args = ("gate", served_model, "--policy", str(path), "--queue-if-missing", "--json")
    first = robmon(*args)
    assert first.code == 2, first.stderr + first.stdout
    assert "queued it as audit" in first.json()["reason"]
    assert robmon(*args).code == 2  # still queued: not queued twice
    assert [a.status for a in audits()] == ["queued"]
    worker = robmon("worker", "--once", "--json")
    assert worker.code == 0, worker.stderr
    assert "succeeded" in worker.json()["audits"][0]
    decided = robmon(*args)
    assert decided.code == 0, decided.stdout
    assert decided.json()["audit_id"] == audits()[0].id
