"""Alerts from findings, and their triage: open -> acknowledged -> resolved | false positive.

One open alert per (rule, source, model): while a finding keeps firing, its alert is updated
(evidence, window, last seen), not duplicated; a severity increase is recorded and notified.
After an alert is closed it opens again only if it fires after the cool-down. Every change is an
``alert_events`` row (who, when, note); notifications go to the outbox in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.alerts import notify
from monitor.alerts.rules import Finding
from monitor.alerts.settings import AlertSettings
from monitor.db.models import Alert, AlertEvent
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import NotFound, RobmonError

SEVERITY_RANK = {"low": 0, "medium": 1, "high": 2, "critical": 3}
OPEN = ("open", "acknowledged")
TRANSITIONS = {
    "acknowledge": ({"open"}, "acknowledged"),
    "resolve": ({"open", "acknowledged"}, "resolved"),
    "false-positive": ({"open", "acknowledged"}, "false_positive"),
}
SYSTEM = "robmon"


@dataclass
class Applied:
    opened: list[int]
    updated: list[int]
    escalated: list[int]
    suppressed: list[str]


def open_key(rule: str, source: str, model: str) -> str:
    return f"{rule}|{model}|{source}"[:600]


def apply_findings(
    session: Session, findings: list[Finding], settings: AlertSettings, now: datetime | None = None
) -> Applied:
    """Open, update or (within the cool-down) suppress one alert per finding."""
    now = now or utcnow()
    applied = Applied([], [], [], [])
    for f in findings:
        key = open_key(f.rule, f.source, f.model_name)
        alert = session.scalar(select(Alert).where(Alert.open_key == key))
        if alert is not None:
            _update(session, alert, f, now, applied, settings)
            continue
        recent = session.scalar(
            select(Alert.closed_at)
            .where(
                Alert.rule == f.rule,
                Alert.source == f.source,
                Alert.model_name == f.model_name,
                Alert.closed_at.is_not(None),
            )
            .order_by(Alert.closed_at.desc())
            .limit(1)
        )
        if recent is not None and recent > now - settings.cooldown:
            applied.suppressed.append(f"{f.rule} {f.source} (closed {recent:%H:%M}, cool-down)")
            continue
        alert = Alert(
            rule=f.rule,
            source=f.source,
            model_name=f.model_name,
            model_version=f.model_version,
            severity=f.severity,
            status="open",
            summary=f.summary,
            evidence=f.evidence,
            window_start=f.window_start,
            window_end=f.window_end,
            first_seen=now,
            last_seen=now,
            updated_at=now,
            open_key=key,
        )
        session.add(alert)
        session.flush()
        session.add(
            AlertEvent(
                alert_id=alert.id,
                at=now,
                actor=SYSTEM,
                action="opened",
                to_status="open",
                note=f.summary,
            )
        )
        notify.enqueue(session, alert, "new", settings)
        applied.opened.append(alert.id)
    return applied


def _update(
    session: Session,
    alert: Alert,
    f: Finding,
    now: datetime,
    applied: Applied,
    settings: AlertSettings,
) -> None:
    alert.summary, alert.evidence = f.summary, f.evidence
    alert.window_start, alert.window_end = min(alert.window_start, f.window_start), f.window_end
    alert.last_seen = alert.updated_at = now
    alert.model_version = f.model_version
    if SEVERITY_RANK[f.severity] > SEVERITY_RANK[alert.severity]:
        session.add(
            AlertEvent(
                alert_id=alert.id,
                at=now,
                actor=SYSTEM,
                action="severity-increased",
                from_status=alert.status,
                to_status=alert.status,
                note=f"{alert.severity} -> {f.severity}: {f.summary}",
            )
        )
        alert.severity = f.severity
        notify.enqueue(session, alert, "severity-increased", settings)
        applied.escalated.append(alert.id)
    else:
        applied.updated.append(alert.id)


def transition(db: Database, alert_id: int, action: str, by: str, note: str | None = None) -> Alert:
    """Acknowledge, resolve or mark a false positive, recording who and why."""
    if action not in TRANSITIONS:
        raise RobmonError(f"unknown action {action!r}; use {', '.join(TRANSITIONS)}.")
    if not by or not by.strip():
        raise RobmonError("say who you are with --by NAME.")
    allowed, target = TRANSITIONS[action]
    now = utcnow()
    with db.session() as s:
        alert = s.get(Alert, alert_id, with_for_update=True)
        if alert is None:
            raise NotFound(f"there is no alert {alert_id} (see `robmon alerts list`).")
        if alert.status not in allowed:
            raise RobmonError(
                f"alert {alert_id} is {alert.status.replace('_', ' ')}; "
                f"it cannot be {target.replace('_', ' ')}."
            )
        s.add(
            AlertEvent(
                alert_id=alert.id,
                at=now,
                actor=by.strip(),
                action=action,
                from_status=alert.status,
                to_status=target,
                note=note,
            )
        )
        alert.status, alert.updated_at = target, now
        if target not in OPEN:
            alert.closed_at, alert.open_key = now, None
        s.flush()
        return alert
