"""Alerts as plain objects for the CLI and the dashboard: lists with filters, one alert with its
history and its source's recent activity."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from monitor.db.models import Alert, AlertEvent, NotificationOutbox, SourceActivity, SourceRollup
from monitor.db.session import Database
from monitor.errors import NotFound


@dataclass
class AlertSummary:
    """An incident: ``rule`` is its most severe rule, ``rules`` every rule in its evidence."""

    id: int
    rule: str
    rules: list[str]
    source: str
    model_name: str
    model_version: str | None
    severity: str
    status: str
    summary: str
    first_seen: datetime
    last_seen: datetime
    window_start: datetime
    window_end: datetime


@dataclass
class AlertEventView:
    at: datetime
    actor: str
    action: str
    from_status: str | None
    to_status: str | None
    note: str | None


@dataclass
class AlertDetail(AlertSummary):
    evidence: dict[str, Any] = field(default_factory=dict)
    events: list[AlertEventView] = field(default_factory=list)
    activity: list[dict[str, Any]] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    notifications: list[dict[str, Any]] = field(default_factory=list)


def _summary(a: Alert) -> dict[str, Any]:
    return dict(
        id=a.id,
        rule=a.rule,
        rules=(a.rules or a.rule).split(","),
        source=a.source,
        model_name=a.model_name,
        model_version=a.model_version,
        severity=a.severity,
        status=a.status,
        summary=a.summary,
        first_seen=a.first_seen,
        last_seen=a.last_seen,
        window_start=a.window_start,
        window_end=a.window_end,
    )


def list_alerts(
    db: Database,
    *,
    status: str | None = None,
    source: str | None = None,
    model: str | None = None,
    rule: str | None = None,
    severity: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AlertSummary]:
    """Newest activity first; ``status`` may be ``active`` (open or acknowledged)."""
    query = select(Alert)
    if status == "active":
        query = query.where(Alert.status.in_(("open", "acknowledged")))
    elif status:
        query = query.where(Alert.status == status.replace("-", "_"))
    for column, value in (
        (Alert.source, source),
        (Alert.model_name, model),
        (Alert.severity, severity),
    ):
        if value:
            query = query.where(column == value)
    if rule:
        query = query.where(rule_in(rule))
    if since is not None:
        query = query.where(Alert.last_seen >= since)
    query = query.order_by(Alert.last_seen.desc(), Alert.id.desc()).limit(limit).offset(offset)
    with db.session() as s:
        return [AlertSummary(**_summary(a)) for a in s.scalars(query)]


def rule_in(rule: str) -> Any:
    """Incidents whose evidence holds ``rule`` (``rules`` is a comma-separated list)."""
    from sqlalchemy import or_

    return or_(
        Alert.rules == rule,
        Alert.rules.like(f"{rule},%"),
        Alert.rules.like(f"%,{rule}"),
        Alert.rules.like(f"%,{rule},%"),
        Alert.rule == rule,
    )


def get_alert(db: Database, alert_id: int) -> AlertDetail:
    """One alert with its audit trail, notifications and its sources' recent activity."""
    with db.session() as s:
        alert = s.get(Alert, alert_id)
        if alert is None:
            raise NotFound(f"there is no alert {alert_id} (see `robmon alerts list`).")
        events = [
            AlertEventView(e.at, e.actor, e.action, e.from_status, e.to_status, e.note)
            for e in s.scalars(
                select(AlertEvent).where(AlertEvent.alert_id == alert_id).order_by(AlertEvent.id)
            )
        ]
        sources = alert.evidence.get("sources") or [alert.source]
        activity = [
            {
                "source": r.source,
                "model": f"{r.model_name}/{r.model_version}",
                "inputs": r.n,
                "flagged": r.flagged,
                "low_confidence": r.low_confidence,
                "mean_confidence": r.sum_confidence / r.n if r.n else None,
                "first_seen": r.first_seen,
                "last_seen": r.last_seen,
            }
            for r in s.scalars(select(SourceActivity).where(SourceActivity.source.in_(sources)))
        ]
        start = alert.window_start - timedelta(hours=1)
        timeline = [
            {"bucket": bucket, "inputs": int(n), "flagged": int(flagged)}
            for bucket, n, flagged in s.execute(
                select(
                    SourceRollup.bucket, func.sum(SourceRollup.n), func.sum(SourceRollup.flagged)
                )
                .where(SourceRollup.source.in_(sources), SourceRollup.bucket >= start)
                .group_by(SourceRollup.bucket)
                .order_by(SourceRollup.bucket)
            )
        ]
        notes = [
            {
                "event": n.event,
                "created_at": n.created_at,
                "attempts": n.attempts,
                "delivered_at": n.delivered_at,
                "last_error": n.last_error,
            }
            for n in s.scalars(
                select(NotificationOutbox)
                .where(NotificationOutbox.alert_id == alert_id)
                .order_by(NotificationOutbox.id)
            )
        ]
        return AlertDetail(
            **_summary(alert),
            evidence=dict(alert.evidence),
            events=events,
            activity=activity,
            timeline=timeline,
            notifications=notes,
        )
