"""Dead letters: the row for a record that cannot be scored, and reading them back (the newest
rows, and how many there are of each kind of reason).

A row holds no NUL character (PostgreSQL refuses NUL in text, and one refused row would stop its
batch): NULs in the excerpt, reason, source or model are replaced by U+FFFD. Nor does a reason
show a Python object's repr (``<_io.BytesIO object at 0x...>``): the parser words its errors
plainly, and a repr that an unforeseen error still carries becomes "an object".

Reasons are one sentence each and often name the record's own values (``ts '0001-…' is out of
range``, ``line of 9123456 bytes ...``); counting groups them by their wording with quoted
values and numbers left out, so one attacker's thousand variations count as one kind.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from monitor.db.models import DeadLetter
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import first_line, quoted
from monitor.ingest.sources import RawLine

if TYPE_CHECKING:
    from monitor.ingest.records import Record

_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# a Python object's default repr ("<_io.BytesIO object at 0x7f...>"): an internal, never a reason
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_NUMBER = re.compile(r"\b\d+(?:\.\d+)?\b")


def undecodable(err: BaseException) -> str:
    """The dead-letter reason for a failure the parser did not foresee (one sentence)."""
    return f"the record could not be decoded ({type(err).__name__}: {quoted(first_line(err))})."


def dead_letter(
    line: RawLine,
    key: str | None,
    reason: str,
    record: Record | None = None,
    *,
    source: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """A ``dead_letters`` row for ``line`` (``key``: its stream entry, if any; the source and
    model from ``record``, or as given when the record was refused after naming them)."""
    return {
        "received_at": utcnow(),
        "origin": _no_nul(line.origin),
        "line_number": line.line_number,
        "byte_offset": line.offset,
        "reason": _no_nul(_OBJECT_REPR.sub("an object", reason)),
        "excerpt": _no_nul(line.excerpt),
        "source": _no_nul(record.source if record else source),
        "model_name": _no_nul(record.model if record else model),
        "entry_key": key,
    }


def _no_nul(text: str | None) -> str | None:
    return None if text is None else text.replace("\x00", "\ufffd")


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
