"""`robmon alerts list|show|evaluate|ack|resolve|false-positive`."""

from __future__ import annotations

import typer

from monitor.cli.base import (
    JSON_OPTION,
    check_choice,
    command_group,
    emit_json,
    limit_option,
    print_table,
    say,
    state,
)
from monitor.errors import NotFound

alerts_app = command_group(
    "alerts", help="Per-source incidents (every rule's findings about one source) and their triage."
)

STATUSES = "open, acknowledged, resolved, false-positive or active (open + acknowledged)"
# the values each filter accepts (anything else is refused, not answered with an empty list)
CHOICES = {
    "--status": ("open", "acknowledged", "resolved", "false-positive", "active"),
    "--severity": ("critical", "high", "medium", "low"),
    # flagged-rate and low-confidence: monitor.alerts.sequential; probing: monitor.alerts.families
    "--rule": ("flagged-rate", "low-confidence", "probing", "probing-distributed"),
}
ALIASES = {"false_positive": "false-positive"}  # the stored spelling works too
MAX_ID = 2**63 - 1  # the largest BIGINT: no database holds an id beyond it


@alerts_app.command("list")
def list_alerts(
    status: str | None = typer.Option(None, help=STATUSES + "."),
    source: str | None = typer.Option(None, help="Only this source."),
    model: str | None = typer.Option(None, help="Only this model."),
    rule: str | None = typer.Option(
        None,
        help="Incidents holding this rule: flagged-rate, low-confidence, probing or "
        "probing-distributed.",
    ),
    severity: str | None = typer.Option(None, help="critical, high, medium or low."),
    since: str | None = typer.Option(None, help="Last seen after: ISO time or 30m, 24h, 7d."),
    limit: int = limit_option(100, "At most this many, most recent first."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Incidents (one per source, its rules as evidence), most recently active first."""
    from monitor.alerts.queries import list_alerts as query
    from monitor.times import parse_since

    for option, value in (("--status", status), ("--severity", severity), ("--rule", rule)):
        check_choice(option, value, CHOICES[option], ALIASES)
    alerts = query(
        state.database(),
        status=status,
        source=source,
        model=model,
        rule=rule,
        severity=severity,
        since=parse_since(since) if since else None,
        limit=limit,
    )
    if as_json:
        emit_json(alerts)
        return
    if not alerts:
        say("no alerts")
        return
    print_table(
        "alerts",
        ("id", "severity", "status", "rules", "source", "model", "last seen (UTC)", "why"),
        [
            (
                a.id,
                a.severity,
                a.status,
                ", ".join(a.rules),
                a.source,
                f"{a.model_name}/{a.model_version}" if a.model_version else a.model_name,
                a.last_seen.strftime("%Y-%m-%d %H:%M"),
                a.summary,
            )
            for a in alerts
        ],
    )


def _check_id(alert_id: int) -> int:
    """An id no database can hold is simply not there (rather than a database error)."""
    if not 0 < alert_id <= MAX_ID:
        raise NotFound(f"there is no alert {alert_id} (see `robmon alerts list`).")
    return alert_id


@alerts_app.command("show")
def show_alert(
    alert_id: int = typer.Argument(..., help="Alert id (see `robmon alerts list`)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """One alert: evidence, history, and its source's recent activity."""
    from monitor.alerts.queries import get_alert

    alert = get_alert(state.database(), _check_id(alert_id))
    if as_json:
        emit_json(alert)
        return
    say(f"incident {alert.id}: {alert.severity}, {', '.join(alert.rules)} ({alert.status})")
    say(alert.summary)
    say(
        f"window {alert.window_start:%Y-%m-%d %H:%M:%S} to {alert.window_end:%H:%M:%S} UTC; "
        f"first seen {alert.first_seen:%Y-%m-%d %H:%M:%S}, last seen "
        f"{alert.last_seen:%Y-%m-%d %H:%M:%S}"
    )
    findings = alert.evidence.get("rules", {})
    print_table(
        "findings",
        ("rule", "model", "severity", "record time (UTC)", "why"),
        [
            (
                e["rule"],
                e["model"],
                e["severity"],
                f"{e['window_start'][:19]} to {e['window_end'][11:19]}",
                e["summary"],
            )
            for e in findings.values()
        ],
    )
    print_table(
        "evidence",
        ("item", "value"),
        [(k, v) for k, v in alert.evidence.items() if k != "rules"],
    )
    print_table(
        "history",
        ("when (UTC)", "who", "action", "status", "note"),
        [
            (
                e.at.strftime("%Y-%m-%d %H:%M:%S"),
                e.actor,
                e.action,
                f"{e.from_status or ''} -> {e.to_status or ''}",
                e.note or "",
            )
            for e in alert.events
        ],
    )
    print_table(
        "source activity",
        ("source", "model", "inputs", "flagged", "low confidence", "last seen (UTC)"),
        [
            (
                a["source"],
                a["model"],
                a["inputs"],
                a["flagged"],
                a["low_confidence"],
                a["last_seen"].strftime("%Y-%m-%d %H:%M"),
            )
            for a in alert.activity
        ],
    )


@alerts_app.command("evaluate")
def evaluate(as_json: bool = JSON_OPTION) -> None:
    """Run the alert rules now over what has been ingested."""
    from monitor.alerts.evaluate import Evaluator
    from monitor.alerts.settings import AlertSettings
    from monitor.scheduler import worker_name

    settings = AlertSettings.from_settings(state.settings())
    result = Evaluator(state.database(), settings, worker_name("cli")).evaluate()
    if as_json:
        emit_json(result)
        return
    say(
        f"{result.sources} sources and {result.fingerprints} fingerprints evaluated in "
        f"{result.seconds:.2f} s: {result.findings} findings, {len(result.opened)} incidents "
        f"opened, {len(result.updated)} updated, {len(result.escalated)} escalated, "
        f"{len(result.suppressed)} suppressed (cool-down)"
    )


def _triage(action: str, alert_id: int, by: str, note: str | None, as_json: bool) -> None:
    from monitor.alerts.lifecycle import transition
    from monitor.alerts.queries import get_alert

    db = state.database()
    transition(db, _check_id(alert_id), action, by, note)
    alert = get_alert(db, alert_id)
    if as_json:
        emit_json(alert)
    else:
        say(f"alert {alert_id} is now {alert.status.replace('_', ' ')} (by {by})")


BY = typer.Option(..., "--by", help="Who does this (recorded in the audit trail).")
NOTE = typer.Option(None, "--note", help="Why (recorded in the audit trail).")


@alerts_app.command("ack")
def ack(alert_id: int, by: str = BY, note: str | None = NOTE, as_json: bool = JSON_OPTION):
    """Acknowledge an open alert."""
    _triage("acknowledge", alert_id, by, note, as_json)


@alerts_app.command("resolve")
def resolve(alert_id: int, by: str = BY, note: str | None = NOTE, as_json: bool = JSON_OPTION):
    """Resolve an alert (it may open again after the cool-down)."""
    _triage("resolve", alert_id, by, note, as_json)


@alerts_app.command("false-positive")
def false_positive(
    alert_id: int, by: str = BY, note: str | None = NOTE, as_json: bool = JSON_OPTION
):
    """Close an alert as a false positive."""
    _triage("false-positive", alert_id, by, note, as_json)
