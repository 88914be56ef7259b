"""Reading the dead letters back: the newest rows, and how many there are of each kind of reason.

Reasons are one sentence each and often name the record's own values (``ts '0001-…' is out of
range``, ``line of 9123456 bytes ...``); counting groups them by their wording with quoted
values and numbers left out, so one attacker's thousand variations count as one kind.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from monitor.db.models import DeadLetter
from monitor.db.session import Database

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


def reason_kind(reason: str) -> str:
    """A reason with its quoted values and numbers replaced: what counts group by."""
    return _NUMBER.sub("N", _QUOTED.sub("'…'", reason))


def dead_letter_rows(
    db: Database, limit: int = 50, since: datetime | None = None, source: str | None = None
) -> list[dict[str, Any]]:
    """The newest dead letters (received at or after ``since``, from ``source``), newest first,
    as plain dicts."""
    query = select(DeadLetter).order_by(DeadLetter.received_at.desc(), DeadLetter.id.desc())
    if since is not None:
        query = query.where(DeadLetter.received_at >= since)
    if source is not None:
        query = query.where(DeadLetter.source == source)
    with db.session() as s:
        return [
            {
                "id": d.id,
                "received_at": _aware(d.received_at),
                "origin": d.origin,
                "line_number": d.line_number,
                "byte_offset": d.byte_offset,
                "entry_key": d.entry_key,
                "source": d.source,
                "model": d.model_name,
                "reason": d.reason,
                "excerpt": d.excerpt,
            }
            for d in s.scalars(query.limit(limit))
        ]


def dead_letter_counts(
    db: Database, since: datetime | None = None, source: str | None = None
) -> list[dict[str, Any]]:
    """Dead letters per kind of reason (``reason_kind``), most frequent first: ``{"reason":
    kind, "count", "example": one full reason, "last_received_at"}``."""
    query = select(
        DeadLetter.reason, func.count().label("n"), func.max(DeadLetter.received_at).label("last")
    ).group_by(DeadLetter.reason)
    if since is not None:
        query = query.where(DeadLetter.received_at >= since)
    if source is not None:
        query = query.where(DeadLetter.source == source)
    kinds: dict[str, dict[str, Any]] = {}
    with db.session() as s:
        for reason, n, last in s.execute(query):
            kind = kinds.setdefault(
                reason_kind(reason),
                {"reason": reason_kind(reason), "count": 0, "example": reason, "last": None},
            )
            kind["count"] += n
            if kind["last"] is None or _aware(last) > kind["last"]:
                kind["last"], kind["example"] = _aware(last), reason
    return [
        {
            "reason": k["reason"],
            "count": k["count"],
            "example": k["example"],
            "last_received_at": k["last"],
        }
        for k in sorted(kinds.values(), key=lambda k: (-k["count"], k["reason"]))
    ]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
