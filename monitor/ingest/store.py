"""Scores, dead letters and read positions in the database; per-source statistics.

``commit_batch`` writes one batch's scores, its dead letters and the read position after it in a
single transaction: a crash before the commit loses nothing (the lines are read again), a crash
after it repeats nothing (the position has moved).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import and_, case, func, insert, or_, select, text, tuple_
from sqlalchemy.exc import IntegrityError
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
    """Which (source, request id) pairs are already stored (one indexed query per batch)."""
    keys = list(set(keys))
    if not keys:
        return set()
    if session.bind.dialect.name == "postgresql":
        rows = session.execute(
            text(
                "SELECT s.source, s.request_id FROM input_scores s "
                "JOIN unnest(CAST(:sources AS text[]), CAST(:ids AS text[])) AS k(source, rid) "
                "ON s.source = k.source AND s.request_id = k.rid"
            ),
            {"sources": [k[0] for k in keys], "ids": [k[1] for k in keys]},
        )
        return {(r.source, r.request_id) for r in rows}
    found: set[tuple[str, str]] = set()
    for i in range(0, len(keys), 500):
        rows = session.execute(
            select(InputScore.source, InputScore.request_id).where(
                tuple_(InputScore.source, InputScore.request_id).in_(keys[i : i + 500])
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


@dataclass
class ScoreTable:
    """Scores as columns (name -> one value per score): how the model produces them and how
    PostgreSQL's unnest takes them."""

    columns: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()), []))

    def column(self, name: str) -> list[Any]:
        return self.columns.get(name, [])

    def extend(self, other: ScoreTable) -> None:
        if not self.columns:
            self.columns = {k: list(v) for k, v in other.columns.items()}
            return
        for name, values in other.columns.items():
            self.columns[name].extend(values)

    def select(self, indices: list[int]) -> ScoreTable:
        return ScoreTable({k: [v[i] for i in indices] for k, v in self.columns.items()})

    def rows(self) -> list[dict[str, Any]]:
        names = list(self.columns)
        return [
            dict(zip(names, values, strict=True))
            for values in zip(*self.columns.values(), strict=True)
        ]


def commit_batch(
    db: Database,
    scores: ScoreTable,
    dead_letters: list[dict[str, Any]],
    position: Position | None,
    extra: Callable[[Session, list[int]], None] | None = None,
) -> list[int]:
    """Scores, dead letters and the read position after them, in one transaction.

    Returns the new scores' ids in order. ``extra(session, ids)`` runs inside the same
    transaction (fingerprints, rollups). A (source, request id) or origin that is already
    stored raises IntegrityError and nothing is committed.
    """
    with db.session() as s:
        ids = insert_scores(s, scores)
        if dead_letters:
            s.execute(dialect_insert(s, DeadLetter.__table__), dead_letters)
        if position is not None and position.path != "stdin":
            save_position(s, position)
        if extra is not None:
            extra(s, ids)
    return ids


_SCORE_COLUMNS = [c.name for c in InputScore.__table__.columns if c.name != "id"]
_JSON_COLUMNS = {"divergences"}
# NULL when a table leaves them out (nothing was converted; no guard answered)
_OPTIONAL_COLUMNS = {"conversion", "guard_verdict", "guard_reason"}
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores DateTime on SQLite


def insert_scores(session: Session, scores: ScoreTable) -> list[int]:
    """Insert scores in as few statements as the database allows; their ids in order."""
    if not len(scores):
        return []
    for name in _OPTIONAL_COLUMNS - set(scores.columns):
        scores.columns[name] = [None] * len(scores)
    missing = set(_SCORE_COLUMNS) - set(scores.columns)
    if missing:
        raise ValueError(f"score columns missing: {sorted(missing)}")
    dialect = session.bind.dialect.name
    if dialect == "postgresql":
        return _insert_scores_postgresql(session, scores)
    if dialect == "sqlite":
        return _insert_scores_sqlite(session, scores)
    rows = [{k: v for k, v in row.items() if k in _SCORE_COLUMNS} for row in scores.rows()]
    result = session.execute(
        insert(InputScore).returning(InputScore.id, sort_by_parameter_order=True), rows
    )
    return [r.id for r in result]


def _sqlite_column(name: str, values: list[Any]) -> list[Any]:
    if name in _JSON_COLUMNS:
        return [None if v is None else orjson.dumps(v).decode() for v in values]
    first = next((v for v in values if v is not None), None)
    if isinstance(first, datetime):
        return [None if v is None else v.astimezone(UTC).strftime(_SQLITE_TIME) for v in values]
    if isinstance(first, bool):
        return [None if v is None else int(v) for v in values]
    return values


def _insert_scores_sqlite(session: Session, scores: ScoreTable) -> list[int]:
    columns = [_sqlite_column(c, scores.columns[c]) for c in _SCORE_COLUMNS]
    rows = list(zip(*columns, strict=True))
    connection = session.connection()
    ids: list[int] = []
    row_sql = "(" + ",".join("?" * len(_SCORE_COLUMNS)) + ")"
    for i in range(0, len(rows), 500):  # within SQLite's limit on bound variables
        chunk = rows[i : i + 500]
        sql = (
            f"INSERT INTO input_scores ({','.join(_SCORE_COLUMNS)}) VALUES "
            + ",".join([row_sql] * len(chunk))
            + " RETURNING id"
        )
        params = tuple(value for row in chunk for value in row)
        # a multi-row INSERT assigns increasing rowids in VALUES order
        ids.extend(sorted(r[0] for r in connection.exec_driver_sql(sql, params)))
    return ids


def _insert_scores_postgresql(session: Session, scores: ScoreTable) -> list[int]:
    """Ids from the sequence, then COPY (a unique violation raises IntegrityError)."""
    ids = list(
        session.scalars(
            text(
                "SELECT nextval(pg_get_serial_sequence('input_scores', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": len(scores)},
        )
    )
    columns = {"id": ids}
    for name in _SCORE_COLUMNS:
        values = scores.columns[name]
        if name in _JSON_COLUMNS:
            values = [None if v is None else orjson.dumps(v).decode() for v in values]
        columns[name] = values
    copy_rows(session, "input_scores", list(columns), zip(*columns.values(), strict=True))
    return ids


def save_position(session: Session, position: Position) -> None:
    """Upsert the read position of one file (one statement, no read first)."""
    values = {
        "path": position.path,
        "inode": position.inode,
        "offset": position.offset,
        "line_number": position.line_number,
        "updated_at": utcnow(),
    }
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    statement = upsert(IngestOffset).values(values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[IngestOffset.path],
            set_={k: statement.excluded[k] for k in values if k != "path"},
        )
    )


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
    converted: int = 0  # inputs resized or colour-converted to fit the model ([ingest.convert])


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
    converted = func.sum(case((InputScore.conversion.is_not(None), 1), else_=0))
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
        converted.label("converted"),
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
                converted=int(r.converted or 0),
            )
            for r in s.execute(query)
        ]


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def driver_value(dialect: str, value: Any) -> Any:
    """A value as the database driver takes it, stored as SQLAlchemy would store it."""
    if dialect == "sqlite":
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime(_SQLITE_TIME)
        if isinstance(value, bool):
            return int(value)
    return value


def driver_rows(session: Session, rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    dialect = session.bind.dialect.name
    return [tuple(driver_value(dialect, v) for v in row) for row in rows]


def _placeholders(session: Session, count: int) -> str:
    mark = "?" if session.bind.dialect.name == "sqlite" else "%s"
    return "(" + ", ".join([mark] * count) + ")"


def driver_insert(
    session: Session, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Rows straight to the driver: binary COPY on PostgreSQL, one executemany on SQLite."""
    if not rows:
        return
    if session.bind.dialect.name == "postgresql":
        copy_rows(session, table, columns, rows)
        return
    sql = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {_placeholders(session, len(columns))}"
    )
    session.connection().exec_driver_sql(sql, driver_rows(session, rows))


def copy_rows(
    session: Session, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """PostgreSQL: ``rows`` by binary COPY (no text formatting or parsing on either side).

    JSON values come already serialized (as str). A unique violation raises SQLAlchemy's
    IntegrityError, as an INSERT would.
    """
    import psycopg

    connection = session.connection()
    types = _column_types(connection, table)
    cursor = connection.connection.driver_connection.cursor()
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN WITH (FORMAT BINARY)"
    try:
        with cursor.copy(statement) as copy:
            copy.set_types([types[c] for c in columns])
            for row in rows:
                copy.write_row(row)
    except psycopg.errors.UniqueViolation as err:
        raise IntegrityError(statement, None, err) from err


def _column_types(connection: Any, table: str) -> dict[str, str]:
    """A table's column types as binary COPY must name them, read once per connection (a
    ``json`` column takes its text as is)."""
    cached = connection.info.setdefault("copy_types", {})
    if table not in cached:
        rows = connection.exec_driver_sql(
            "SELECT column_name, udt_name FROM information_schema.columns "
            "WHERE table_name = %s AND table_schema = current_schema()",
            (table,),
        )
        cached[table] = {name: "text" if kind == "json" else kind for name, kind in rows}
    return cached[table]
