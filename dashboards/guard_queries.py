"""The inline guard's side of an incident, for the alert view: what the guard answered each of
the incident's addresses (counts by verdict in the incident's window and in all, the newest
refused and reviewed requests), the orders in force for them, and a triager's order given from
the incident (``monitor.guard.sources.set_override``, which also adds it to the incident's trail).

Counts and requests read ``input_scores`` through its (source, ts) index, never the whole
table. Windows are in record time (``ts``), as the incident's own window is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from monitor.db.models import Alert, InputScore
from monitor.db.session import Database
from monitor.errors import NotFound, RobmonError
from monitor.guard.sources import Override, get_override, orders_for, set_override

VERDICTS = ("allow", "review", "refuse")
NOTICED = ("refuse", "review")  # the verdicts listed request by request
LATEST = 10


@dataclass(frozen=True)
class AddressVerdicts:
    """Guarded requests of one address by verdict: in the incident's window and in all."""

    source: str
    window: dict[str, int]
    total: dict[str, int]
    order: Override | None  # the order in force at the guard (never a ``clear``)


@dataclass(frozen=True)
class GuardedRequest:
    ts: datetime
    source: str
    model: str  # NAME/VERSION
    verdict: str
    reason: str | None
    request_id: str | None


@dataclass(frozen=True)
class IncidentGuard:
    alert_id: int
    source: str  # the incident's own source, the one an order is for unless another is picked
    addresses: list[AddressVerdicts]  # the incident's source first, then the group's others
    latest: list[GuardedRequest]  # the newest refused and reviewed requests, newest first


def incident_addresses(source: str, sources: str | None) -> list[str]:
    """Every address an incident names: its source first, then the others (``sources`` is
    comma-separated) in order."""
    others = sorted({*(sources or "").split(",")} - {"", source})
    return [source, *others]


def incident_guard(db: Database, alert_id: int) -> IncidentGuard:
    """The guard's verdicts and orders for every address of incident ``alert_id`` (NotFound
    when there is none)."""
    with db.session() as s:
        alert = s.get(Alert, alert_id)
        if alert is None:
            raise NotFound(f"there is no alert {alert_id} (see `robmon alerts list`).")
        addresses = incident_addresses(alert.source, alert.sources)
        counts = _verdict_counts(s, addresses, alert.window_start, alert.window_end)
        latest = _latest(s, addresses)
    orders = orders_for(db, addresses)
    rows = [
        AddressVerdicts(
            source,
            {v: counts.get((source, v), (0, 0))[0] for v in VERDICTS},
            {v: counts.get((source, v), (0, 0))[1] for v in VERDICTS},
            orders.get(source),
        )
        for source in addresses
    ]
    return IncidentGuard(alert_id, alert.source, rows, latest)


def _verdict_counts(
    session: Session, addresses: list[str], start: datetime, end: datetime
) -> dict[tuple[str, str], tuple[int, int]]:
    """(source, verdict) -> (guarded requests in the window, in all)."""
    in_window = and_(InputScore.ts >= start, InputScore.ts <= end)
    rows = session.execute(
        select(
            InputScore.source,
            InputScore.guard_verdict,
            func.sum(case((in_window, 1), else_=0)),
            func.count(),
        )
        .where(InputScore.source.in_(addresses), InputScore.guard_verdict.is_not(None))
        .group_by(InputScore.source, InputScore.guard_verdict)
    ).all()
    return {
        (source, verdict): (int(window or 0), int(total)) for source, verdict, window, total in rows
    }


def _latest(session: Session, addresses: list[str]) -> list[GuardedRequest]:
    """The newest ``LATEST`` refused or reviewed requests of the addresses, newest first (one
    query per address, so that each reads its (source, ts) index backwards and stops early)."""
    found: list[GuardedRequest] = []
    for source in addresses:
        rows = session.execute(
            select(
                InputScore.ts,
                InputScore.source,
                InputScore.model_name,
                InputScore.model_version,
                InputScore.guard_verdict,
                InputScore.guard_reason,
                InputScore.request_id,
            )
            .where(InputScore.source == source, InputScore.guard_verdict.in_(NOTICED))
            .order_by(InputScore.ts.desc(), InputScore.id.desc())
            .limit(LATEST)
        ).all()
        found += [
            GuardedRequest(
                r.ts,
                r.source,
                f"{r.model_name}/{r.model_version}",
                r.guard_verdict,
                r.guard_reason,
                r.request_id,
            )
            for r in rows
        ]
    return sorted(found, key=lambda r: r.ts, reverse=True)[:LATEST]


def order_from_incident(
    db: Database, alert_id: int, source: str, action: str, by: str, note: str | None
) -> Override:
    """Puts one of incident ``alert_id``'s addresses on ``action`` (refuse, allow, clear) at the
    guard, recorded with who and why here and on the incident's trail. RobmonError for an
    address the incident does not name, or a clear with no order in force."""
    with db.session() as s:
        alert = s.get(Alert, alert_id)
        if alert is None:
            raise NotFound(f"there is no alert {alert_id} (see `robmon alerts list`).")
        addresses = incident_addresses(alert.source, alert.sources)
    if source not in addresses:
        raise RobmonError(f"{str(source)[:60]!r} is not an address of incident {alert_id}.")
    if action == "clear" and source not in orders_for(db, [source]):
        raise RobmonError(f"{source} has no order in force at the guard to clear.")
    return set_override(db, source, action, by, note or None, alert_id)


def recorded_order(db: Database, alert_id: int, override_id: int) -> Override | None:
    """Order ``override_id`` if it was given from incident ``alert_id`` (else None)."""
    order = get_override(db, override_id)
    return order if order is not None and order.alert_id == alert_id else None
