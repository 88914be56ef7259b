"""Incidents from findings, and their triage: open -> acknowledged -> resolved | false positive.

One incident per source: every finding about a source (all rules, all models) lands in its one
open incident, with each rule's finding kept as evidence and the incident at the highest
severity among them. A distributed probing finding is one incident for its group of addresses
(keyed by the first). While findings keep coming the incident is updated, not duplicated; a new
rule joining it or a severity increase is recorded (and a severity increase notified). After an
incident is closed it opens again only for findings whose windows end more than the cool-down
after the record time at which it was closed. Every change is an ``alert_events`` row (who,
when, note); notifications go to the outbox in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.alerts import notify
from monitor.alerts.rules import Finding
from monitor.alerts.settings import AlertSettings
from monitor.db.models import Alert, AlertEvent, SourceActivity
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
INCIDENT = "incident"
# evidence too ambiguous to open an incident alone (a bad camera also makes a model unsure):
# it joins the source's incident when another rule opens one
SUPPORTING = {"low-confidence"}


@dataclass
class Applied:
    opened: list[int]
    updated: list[int]
    escalated: list[int]
    suppressed: list[str]
    taken: list[Finding] = field(default_factory=list)  # findings an incident took or suppressed


def open_key(source: str) -> str:
    return f"{INCIDENT}|{source}"[:600]


def apply_findings(
    session: Session,
    findings: list[Finding],
    settings: AlertSettings,
    now: datetime | None = None,
) -> Applied:
    """Open, update or (within the cool-down) suppress one incident per source."""
    now = now or utcnow()
    applied = Applied([], [], [], [])
    by_source: dict[str, list[Finding]] = {}
    for f in findings:
        by_source.setdefault(f.source, []).append(f)
    for source, found in sorted(by_source.items()):
        incident = session.scalar(select(Alert).where(Alert.open_key == open_key(source)))
        if incident is None:
            if all(f.rule in SUPPORTING for f in found):
                continue  # waits for a rule that may open an incident
            applied.taken += found
            found = _after_cooldown(session, source, found, settings, applied)
            if not found:
                continue
            incident = _open(session, source, found, settings, now)
            applied.opened.append(incident.id)
            continue
        applied.taken += found
        _update(session, incident, found, now, applied, settings)
    return applied


def _after_cooldown(
    session: Session, source: str, found: list[Finding], settings: AlertSettings, applied: Applied
) -> list[Finding]:
    """The findings that may reopen a closed incident: their windows end after the cool-down,
    counted in record time from when the last incident of the source was closed."""
    closed = session.scalar(
        select(Alert.closed_watermark)
        .where(Alert.source == source, Alert.closed_at.is_not(None))
        .order_by(Alert.closed_at.desc())
        .limit(1)
    )
    if closed is None:
        return found
    kept = [f for f in found if f.window_end > closed + settings.cooldown]
    if not kept:
        applied.suppressed.append(
            f"{source} (closed at record time {closed:%Y-%m-%d %H:%M}, cool-down)"
        )
    return kept


def _evidence(f: Finding) -> dict:
    return {
        "rule": f.rule,
        "model": f"{f.model_name}/{f.model_version}",
        "severity": f.severity,
        "summary": f.summary,
        "window_start": f.window_start.isoformat(),
        "window_end": f.window_end.isoformat(),
        **f.evidence,
    }


def _merge(incident: Alert | None, found: list[Finding]) -> dict:
    """Incident evidence: each rule's newest finding (per model), the addresses involved and
    the most suspicious inputs of all."""
    by_rule = dict((incident.evidence or {}).get("rules", {})) if incident else {}
    for f in found:
        key = f"{f.rule} {f.model_name}/{f.model_version}"
        new, old = _evidence(f), by_rule.get(key, {})
        if "sources" in new and "sources" in old:  # a group only ever grows
            new["sources"] = sorted(set(new["sources"]) | set(old["sources"]))
        by_rule[key] = new
    sources = sorted(
        {s for e in by_rule.values() for s in e.get("sources", [])}
        | {incident.source if incident else found[0].source}
    )
    suspicious = sorted({i for e in by_rule.values() for i in e.get("suspicious_score_ids", [])})
    return {"rules": by_rule, "sources": sources, "suspicious_score_ids": suspicious[-20:]}


def _headline(evidence: dict) -> tuple[str, str, str, str, str | None, str]:
    """(rule, rules, severity, model name, version, summary) of the most severe finding."""
    findings = list(evidence["rules"].values())
    top = max(findings, key=lambda e: (SEVERITY_RANK[e["severity"]], e["window_end"]))
    rules = sorted({e["rule"] for e in findings})
    name, _, version = top["model"].rpartition("/")
    more = len(findings) - 1
    summary = top["summary"] + (f" (and {more} more finding{'s' * (more > 1)})" if more else "")
    return top["rule"], ",".join(rules), top["severity"], name, version or None, summary


def _open(
    session: Session, source: str, found: list[Finding], settings: AlertSettings, now: datetime
) -> Alert:
    evidence = _merge(None, found)
    rule, rules, severity, name, version, summary = _headline(evidence)
    incident = Alert(
        rule=rule,
        rules=rules,
        source=source,
        sources=",".join(evidence["sources"]),
        model_name=name,
        model_version=version,
        severity=severity,
        status="open",
        summary=summary,
        evidence=evidence,
        window_start=min(f.window_start for f in found),
        window_end=max(f.window_end for f in found),
        first_seen=now,
        last_seen=now,
        updated_at=now,
        open_key=open_key(source),
    )
    session.add(incident)
    session.flush()
    _event(session, incident, now, "opened", None, summary)
    notify.enqueue(session, incident, "new", settings)
    return incident


def _update(
    session: Session,
    incident: Alert,
    found: list[Finding],
    now: datetime,
    applied: Applied,
    settings: AlertSettings,
) -> None:
    before = set((incident.rules or incident.rule).split(","))
    evidence = _merge(incident, found)
    rule, rules, severity, name, version, summary = _headline(evidence)
    incident.evidence, incident.summary = evidence, summary
    incident.rule, incident.rules = rule, rules
    incident.sources = ",".join(evidence["sources"])
    incident.model_name, incident.model_version = name, version
    incident.window_start = min(incident.window_start, *(f.window_start for f in found))
    incident.window_end = max(incident.window_end, *(f.window_end for f in found))
    incident.last_seen = incident.updated_at = now
    for new in sorted(set(rules.split(",")) - before):
        _event(session, incident, now, "rule-added", incident.status, f"{new}: {summary}")
    if SEVERITY_RANK[severity] > SEVERITY_RANK[incident.severity]:
        _event(
            session,
            incident,
            now,
            "severity-increased",
            incident.status,
            f"{incident.severity} -> {severity}: {summary}",
        )
        incident.severity = severity
        notify.enqueue(session, incident, "severity-increased", settings)
        applied.escalated.append(incident.id)
    else:
        applied.updated.append(incident.id)


def _event(
    session: Session, incident: Alert, now: datetime, action: str, status: str | None, note: str
) -> None:
    session.add(
        AlertEvent(
            alert_id=incident.id,
            at=now,
            actor=SYSTEM,
            action=action,
            from_status=status,
            to_status=status or "open",
            note=note,
        )
    )


def record_watermark(session: Session, incident: Alert) -> datetime | None:
    """The newest record time ingested for the incident's models: where its cool-down starts."""
    models = {
        e["model"].rpartition("/")[0] for e in (incident.evidence or {}).get("rules", {}).values()
    }
    return session.scalar(
        select(func.max(SourceActivity.last_seen)).where(
            SourceActivity.model_name.in_(models or {incident.model_name})
        )
    )


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
            alert.closed_watermark = record_watermark(s, alert) or alert.window_end
        s.flush()
        return alert
