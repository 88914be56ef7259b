"""Triage with an audit trail, cool-down, webhook delivery through the outbox, and the CLI."""

import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from monitor.attacks import fgsm
from tests.ingest.lines import record, write_lines

SECRET = "s3cret"
# record time of the attack logs: yesterday, whatever today is
START = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)


def _attack_log(registry, digits, path: Path, offset: int = 0, ts_minute: int = 0) -> Path:
    model = registry.load(registry.resolve("digits-cnn")).module
    x, y = digits.x[offset : offset + 40], digits.y[offset : offset + 40]
    adversarial = fgsm(model, x, y, 0.15)
    ts = (START + timedelta(minutes=ts_minute)).isoformat().replace("+00:00", "Z")
    lines = [
        record(a, source="10.6.6.6", rid=f"a{offset + i}", ts=ts) for i, a in enumerate(adversarial)
    ]
    lines += [
        record(digits.x[200 + offset + i], source="10.0.0.7", rid=f"b{offset + i}", ts=ts)
        for i in range(40)
    ]
    return write_lines(path, lines)


def test_ingest_evaluate_list_in_a_script_and_triage(
    demo_home, demo_registry, digits, robmon, tmp_path
) -> None:
    log = _attack_log(demo_registry, digits, tmp_path / "a.jsonl")
    assert robmon("ingest", str(log)).code == 0
    evaluated = robmon("alerts", "evaluate", "--json")
    assert evaluated.code == 0 and evaluated.json()["opened"]
    alerts = robmon("alerts", "list", "--json").json()
    # one incident for the attacker, its rules inside
    [incident] = alerts
    assert incident["source"] == "10.6.6.6" and "flagged-rate" in incident["rules"]
    alert_id = incident["id"]
    assert robmon("alerts", "list", "--rule", "flagged-rate", "--json").json()[0]["id"] == alert_id

    assert robmon("alerts", "ack", str(alert_id), "--by", "ana", "--note", "looking").code == 0
    refused = robmon("alerts", "ack", str(alert_id), "--by", "ana")
    assert refused.code == 1 and "is acknowledged; it cannot be acknowledged" in refused.stderr
    done = robmon(
        "alerts", "resolve", str(alert_id), "--by", "bo", "--note", "blocked IP", "--json"
    ).json()
    assert done["status"] == "resolved"
    trail = [(e["actor"], e["action"], e["to_status"], e["note"]) for e in done["events"]]
    assert trail == [
        ("robmon", "opened", "open", done["events"][0]["note"]),
        ("ana", "acknowledge", "acknowledged", "looking"),
        ("bo", "resolve", "resolved", "blocked IP"),
    ]
    shown = robmon("alerts", "show", str(alert_id))
    assert "blocked IP" in shown.stdout and "10.6.6.6" in shown.stdout
    assert robmon("alerts", "list", "--status", "active", "--json").json() == []
    assert robmon("alerts", "resolve", "999", "--by", "x").stderr.startswith(
        "error: there is no alert 999"
    )


def test_cool_down_then_reopen(demo_home, demo_registry, digits, tmp_path) -> None:
    from monitor.alerts.evaluate import Evaluator
    from monitor.alerts.lifecycle import transition
    from monitor.alerts.queries import list_alerts
    from monitor.alerts.settings import AlertSettings
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.ingest.pipeline import Ingester

    settings = load_settings()
    db = open_database(settings)
    evaluator = Evaluator(db, AlertSettings.from_settings(settings), "test")
    ingester = Ingester(db, demo_registry, settings)
    ingester.ingest_files([str(_attack_log(demo_registry, digits, tmp_path / "1.jsonl"))])
    evaluator.evaluate()
    [first] = list_alerts(db, rule="flagged-rate")
    transition(db, first.id, "resolve", "ana", "handled")
    # the cool-down (30 min) counts in record time from the watermark at closing, whatever
    # the wall clock says: a minute later in record time is suppressed ...
    ingester.ingest_files([str(_attack_log(demo_registry, digits, tmp_path / "2.jsonl", 40, 1))])
    soon = evaluator.evaluate()
    assert any("cool-down" in s for s in soon.suppressed)
    assert [a.id for a in list_alerts(db, rule="flagged-rate")] == [first.id]
    # ... and 35 minutes later in record time opens a new incident at once
    ingester.ingest_files([str(_attack_log(demo_registry, digits, tmp_path / "3.jsonl", 80, 35))])
    later = evaluator.evaluate()
    assert later.opened
    assert len(list_alerts(db, rule="flagged-rate")) == 2


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list] = []
    failures_left = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Receiver.failures_left > 0:
            Receiver.failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    Receiver.received, Receiver.failures_left = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_webhook_delivers_exactly_once_also_when_down_at_first(
    demo_home, demo_registry, digits, receiver, tmp_path
) -> None:
    from monitor.alerts.evaluate import Evaluator
    from monitor.alerts.notify import deliver_due
    from monitor.alerts.settings import AlertSettings
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.ingest.pipeline import Ingester

    port = receiver.server_address[1]
    Path("robmon.toml").write_text(
        f'[alerts.webhook]\nurl = "http://127.0.0.1:{port}/hook"\nsecret = "{SECRET}"\n'
        'backoff = "0s"\n'
    )
    settings = load_settings()
    db = open_database(settings)
    alert_settings = AlertSettings.from_settings(settings)
    Ingester(db, demo_registry, settings).ingest_files(
        [str(_attack_log(demo_registry, digits, tmp_path / "a.jsonl"))]
    )
    opened = Evaluator(db, alert_settings, "test").evaluate().opened
    assert opened

    # the receiver is not listening yet: nothing is lost, the outbox keeps the notifications
    down = AlertSettings.from_settings(settings)
    object.__setattr__(down.webhook, "url", "http://127.0.0.1:9/hook")
    assert deliver_due(db, down).delivered == 0
    Receiver.failures_left = 2  # then it answers 503 twice
    attempts = [deliver_due(db, alert_settings) for _ in range(6)]
    assert sum(a.delivered for a in attempts) == len(opened)
    assert deliver_due(db, alert_settings).delivered == 0  # nothing is sent again
    assert len(Receiver.received) == len(opened)
    ids = set()
    for headers, body in Receiver.received:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers["X-Robmon-Signature"] == expected
        payload = json.loads(body)
        assert payload["event"] == "new" and payload["source"] == "10.6.6.6"
        assert "flagged-rate" in payload["rules"] and payload["sources"] == ["10.6.6.6"]
        ids.add(payload["alert_id"])
    assert ids == set(opened)


def test_a_sources_findings_form_one_incident_and_low_confidence_only_supports(demo_home) -> None:
    from monitor.alerts.lifecycle import apply_findings
    from monitor.alerts.queries import get_alert, list_alerts
    from monitor.alerts.rules import Finding
    from monitor.alerts.settings import AlertSettings
    from monitor.config import load_settings
    from monitor.db.session import open_database

    db = open_database(load_settings())
    end = START + timedelta(minutes=10)

    def finding(rule: str, source: str, severity: str) -> Finding:
        evidence = {"suspicious_score_ids": [1]}
        return Finding(rule, source, "m", "1", severity, f"{source} {rule}", START, end, evidence)

    with db.session() as s:
        first = apply_findings(
            s,
            [
                finding("flagged-rate", "a", "medium"),
                finding("low-confidence", "a", "high"),
                finding("low-confidence", "b", "high"),  # a bad camera alone: no incident
            ],
            AlertSettings(),
        )
    assert len(first.opened) == 1 and {f.source for f in first.taken} == {"a"}
    with db.session() as s:
        later = apply_findings(s, [finding("probing", "a", "critical")], AlertSettings())
    assert later.escalated == first.opened
    [incident] = list_alerts(db)
    detail = get_alert(db, incident.id)
    assert incident.source == "a" and incident.rules == [
        "flagged-rate",
        "low-confidence",
        "probing",
    ]
    assert incident.severity == "critical" and incident.rule == "probing"
    assert [e.action for e in detail.events] == ["opened", "rule-added", "severity-increased"]
    assert {f["rule"] for f in detail.evidence["rules"].values()} == set(incident.rules)
