"""Scores, dead letters and read positions in the database; per-source statistics.

``commit_batch`` writes one batch's scores, its dead letters and the read position after it in a
single transaction: a crash before the commit loses nothing (the lines are read again), a crash
after it repeats nothing (the position has moved).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, tuple_
from sqlalchemy.orm import Session

from monitor.db.models import DeadLetter, IngestOffset, InputScore
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.ingest.sources import Position


def dialect_insert(session: Session, table: Any) -> Any:
    """INSERT that skips rows violating a unique constraint (another writer got there first)."""
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    if session.bind.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing()
    return insert(table)


def known_requests(session: Session, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (source, request id) pairs are already stored."""
    keys = list(set(keys))
    found: set[tuple[str, str]] = set()
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        rows = session.execute(
            select(InputScore.source, InputScore.request_id).where(
                tuple_(InputScore.source, InputScore.request_id).in_(chunk)
            )
        )
        found.update((r.source, r.request_id) for r in rows)
    return found


def known_origins(session: Session, origins: Sequence[str]) -> set[str]:
    """Which origins (stream entry ids) already have a score or a dead letter."""
    found: set[str] = set()
    for i in range(0, len(origins), 500):
        chunk = list(origins[i : i + 500])
        found.update(session.scalars(select(InputScore.origin).where(InputScore.origin.in_(chunk))))
        found.update(
            session.scalars(select(DeadLetter.entry_key).where(DeadLetter.entry_key.in_(chunk)))
        )
    return found


def commit_batch(
    db: Database,
    scores: list[dict[str, Any]],
    dead_letters: list[dict[str, Any]],
    position: Position | None,
    extra: Any = None,
) -> None:
    """Scores, dead letters and the read position after them, in one transaction.

    ``extra(session, score_ids)`` runs inside the same transaction (rollups, fingerprints).
    """
    with db.session() as s:
        if scores:
            s.execute(dialect_insert(s, InputScore.__table__), scores)
        if dead_letters:
            s.execute(dialect_insert(s, DeadLetter.__table__), dead_letters)
        if position is not None and position.path != "stdin":
            s.merge(
                IngestOffset(
                    path=position.path,
                    inode=position.inode,
                    offset=position.offset,
                    line_number=position.line_number,
                    updated_at=utcnow(),
                )
            )
        if extra is not None:
            extra(s)


def load_positions(db: Database) -> dict[str, Position]:
    with db.session() as s:
        return {
            row.path: Position(row.path, row.inode, row.offset, row.line_number)
            for row in s.scalars(select(IngestOffset))
        }


@dataclass
class SourceStats:
    source: str
    count: int
    flagged: int
    flagged_rate: float
    low_confidence_rate: float
    mean_confidence: float | None
    max_divergence: float | None
    first_seen: datetime
    last_seen: datetime


def source_stats(
    db: Database,
    *,
    since: datetime | None = None,
    model: str | None = None,
    source: str | None = None,
    limit: int = 100,
) -> list[SourceStats]:
    """Per source: inputs, flagged share, mean confidence, largest divergence (most flagged
    first)."""
    flagged = func.sum(case((InputScore.flagged, 1), else_=0))
    low = func.sum(case((InputScore.low_confidence, 1), else_=0))
    count = func.count()
    query = select(
        InputScore.source,
        count.label("n"),
        flagged.label("flagged"),
        low.label("low"),
        func.avg(InputScore.confidence).label("mean_conf"),
        func.max(InputScore.max_divergence).label("max_div"),
        func.min(InputScore.ts).label("first"),
        func.max(InputScore.ts).label("last"),
    ).group_by(InputScore.source)
    conditions = []
    if since is not None:
        conditions.append(InputScore.ts >= since)
    if model:
        conditions.append(or_(InputScore.model_name == model))
    if source:
        conditions.append(InputScore.source == source)
    if conditions:
        query = query.where(and_(*conditions))
    query = query.order_by((flagged * 1.0 / count).desc(), count.desc()).limit(limit)
    with db.session() as s:
        return [
            SourceStats(
                source=r.source,
                count=r.n,
                flagged=int(r.flagged or 0),
                flagged_rate=(r.flagged or 0) / r.n,
                low_confidence_rate=(r.low or 0) / r.n,
                mean_confidence=float(r.mean_conf) if r.mean_conf is not None else None,
                max_divergence=float(r.max_div) if r.max_div is not None else None,
                first_seen=_aware(r.first),
                last_seen=_aware(r.last),
            )
            for r in s.execute(query)
        ]


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
