"""What the guard knows of each source: its open incidents and a triager's override, read from
the database and kept in memory for ``cache_seconds`` so that a verdict costs a dict lookup.

Overrides are append-only rows of ``guard_overrides`` (``refuse``, ``allow`` or ``clear``): the
newest per source is in force and all of them are the audit trail. Setting one from an incident
also adds an event to the incident's trail. A daemon thread reads the state again every
``cache_seconds`` (one query each for incidents and overrides), so no request waits for it; a
failed read keeps the last state and says so in the log, so a database blip neither stops
answers nor forgets known attackers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from monitor.db.models import Alert, AlertEvent, GuardOverride
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import NotFound, RobmonError
from monitor.guard.policy import SEVERITIES

log = logging.getLogger(__name__)
OPEN_STATUSES = ("open", "acknowledged")
OVERRIDE_ACTIONS = ("refuse", "allow", "clear")


@dataclass(frozen=True)
class Incident:
    id: int
    severity: str
    status: str


@dataclass(frozen=True)
class Override:
    id: int
    source: str
    action: str  # refuse, allow, clear
    actor: str
    at: datetime
    note: str | None
    alert_id: int | None


@dataclass(frozen=True)
class SourceState:
    incident: Incident | None  # the most severe open incident naming the source
    override: Override | None  # the order in force (never a ``clear``)


NORMAL = SourceState(None, None)


class SourceStates:
    """Per-source incident and override state, read again every ``ttl`` seconds by a daemon
    thread, so that no request waits for the query (0.7–2 ms); ``ttl`` 0 reads on every check
    (tests, or a caller that wants no delay at all)."""

    def __init__(self, db: Database | None, ttl: float = 5.0) -> None:
        self.db, self.ttl = db, ttl
        self._states: dict[str, SourceState] = {}
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        if db is not None:
            self.refresh_now()
            if ttl > 0:
                self._refresher = threading.Thread(
                    target=self._refresh_every_ttl, name="guard-source-states", daemon=True
                )
                self._refresher.start()

    def state(self, source: str) -> SourceState:
        if self.db is not None and self._refresher is None:
            self.refresh_now()
        return self._states.get(source, NORMAL)

    def refresh_now(self) -> None:
        """Read the state now; a failed read keeps the last state (and says so in the log)."""
        try:
            self._states = read_states(self.db)  # type: ignore[arg-type]
        except SQLAlchemyError as err:
            log.warning("guard: cannot read incident state (%s); keeping the last state.", err)

    def close(self) -> None:
        self._stop.set()

    def _refresh_every_ttl(self) -> None:
        while not self._stop.wait(self.ttl):
            self.refresh_now()


def read_states(db: Database) -> dict[str, SourceState]:
    """Every source with an open incident or an override in force."""
    incidents: dict[str, Incident] = {}
    with db.session() as s:
        rows = s.execute(
            select(Alert.id, Alert.source, Alert.sources, Alert.severity, Alert.status).where(
                Alert.status.in_(OPEN_STATUSES)
            )
        ).all()
        for row in rows:
            incident = Incident(row.id, row.severity, row.status)
            for source in {row.source, *(row.sources or "").split(",")} - {""}:
                held = incidents.get(source)
                if held is None or _rank(incident) > _rank(held):
                    incidents[source] = incident
        overrides = {o.source: o for o in _newest_overrides(s) if o.action != "clear"}
    return {
        source: SourceState(incidents.get(source), overrides.get(source))
        for source in incidents.keys() | overrides.keys()
    }


def _rank(incident: Incident) -> int:
    return SEVERITIES.index(incident.severity) if incident.severity in SEVERITIES else 0


def _newest_overrides(session: Session) -> list[Override]:
    newest = select(func.max(GuardOverride.id)).group_by(GuardOverride.source).scalar_subquery()
    rows = session.scalars(select(GuardOverride).where(GuardOverride.id.in_(newest))).all()
    return [_override(r) for r in rows]


def _override(row: GuardOverride) -> Override:
    return Override(row.id, row.source, row.action, row.actor, row.at, row.note, row.alert_id)


def set_override(
    db: Database,
    source: str,
    action: str,
    by: str,
    note: str | None = None,
    alert_id: int | None = None,
) -> Override:
    """Put ``source`` on refuse or allow at the guard, or clear its order; recorded with who and
    why (and on the incident's trail when ``alert_id`` names one)."""
    if action not in OVERRIDE_ACTIONS:
        raise RobmonError(f"unknown guard order {action!r}; use {', '.join(OVERRIDE_ACTIONS)}.")
    if not by or not by.strip():
        raise RobmonError("say who you are with --by NAME.")
    source = _request_source(source)
    now = utcnow()
    with db.session() as s:
        if action == "clear" and _in_force(s, source) is None:
            raise RobmonError(f"{source} has no order in force at the guard to clear.")
        if alert_id is not None:
            s.add(_incident_event(s, alert_id, source, action, by.strip(), now, note))
        row = GuardOverride(
            source=source, action=action, actor=by.strip(), at=now, note=note, alert_id=alert_id
        )
        s.add(row)
        s.flush()
        return _override(row)


def _request_source(source: str) -> str:
    """The source as the guard reads it from a request (``ingest.fields``: plain text of 1 to
    255 characters, no surrounding whitespace): an order for any other spelling would never
    match a request."""
    from monitor.errors import BadRecord
    from monitor.ingest.fields import text_field

    try:
        return text_field({"source": source}, "source")
    except BadRecord as err:
        raise RobmonError(f"no request can come from that source: {err}") from None


def _in_force(session: Session, source: str) -> GuardOverride | None:
    newest = session.scalar(
        select(GuardOverride)
        .where(GuardOverride.source == source)
        .order_by(GuardOverride.id.desc())
        .limit(1)
    )
    return newest if newest is not None and newest.action != "clear" else None


def _incident_event(
    session: Session,
    alert_id: int,
    source: str,
    action: str,
    by: str,
    now: datetime,
    note: str | None,
) -> AlertEvent:
    """The incident's trail entry for an order given from it (the incident must name the
    source)."""
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise NotFound(f"there is no alert {alert_id} (see `robmon alerts list`).")
    if source not in {alert.source, *(alert.sources or "").split(",")}:
        raise RobmonError(f"incident {alert_id} is not about {source}.")
    return AlertEvent(
        alert_id=alert_id,
        at=now,
        actor=by,
        action=f"guard-{action}",
        from_status=alert.status,
        to_status=alert.status,
        note=f"source {source} on {action} at the guard" + (f": {note}" if note else ""),
    )


def override_history(db: Database, source: str | None = None, limit: int = 100) -> list[Override]:
    """Overrides, newest first (of one source, or of all)."""
    query = select(GuardOverride).order_by(GuardOverride.id.desc()).limit(limit)
    if source is not None:
        query = query.where(GuardOverride.source == source)
    with db.session() as s:
        return [_override(r) for r in s.scalars(query).all()]


def overrides_in_force(db: Database) -> list[Override]:
    """The order in force for every source that has one (``clear`` ends an order)."""
    with db.session() as s:
        return sorted(
            (o for o in _newest_overrides(s) if o.action != "clear"), key=lambda o: o.source
        )


def orders_for(db: Database, sources: Collection[str]) -> dict[str, Override]:
    """The order in force for each of ``sources`` that has one (``clear`` ends an order)."""
    if not sources:
        return {}
    newest = (
        select(func.max(GuardOverride.id))
        .where(GuardOverride.source.in_(list(sources)))
        .group_by(GuardOverride.source)
        .scalar_subquery()
    )
    with db.session() as s:
        rows = s.scalars(select(GuardOverride).where(GuardOverride.id.in_(newest))).all()
        return {r.source: _override(r) for r in rows if r.action != "clear"}


def get_override(db: Database, override_id: int) -> Override | None:
    """One order by its id (None when there is none)."""
    with db.session() as s:
        row = s.get(GuardOverride, override_id)
        return None if row is None else _override(row)
