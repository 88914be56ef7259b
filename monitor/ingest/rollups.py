"""What the ingester keeps beside each batch's scores, in the same transaction: per-minute
rollups and per-source totals (read by the alert rules and the dashboard instead of scanning
``input_scores``), and the inputs' fingerprints (read by the probing rule)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import case
from sqlalchemy.orm import Session

from monitor.db.models import InputFingerprint, ModelRollup, SourceActivity, SourceRollup
from monitor.db.types import utcnow
from monitor.ingest.store import ScoreTable, dialect_insert

COUNTED = {"flagged": "flagged", "low_confidence": "low_confidence", "strong": "strong_suspicious"}


class _Totals:
    __slots__ = ("counts", "first", "last", "max_divergence", "n", "sum_confidence")

    def __init__(self) -> None:
        self.n, self.sum_confidence = 0, 0.0
        self.max_divergence: float | None = None
        self.first: datetime | None = None
        self.last: datetime | None = None
        self.counts = dict.fromkeys(COUNTED, 0)

    def add(self, columns: dict[str, list[Any]], i: int, ts: datetime) -> None:
        self.n += 1
        self.sum_confidence += columns["confidence"][i] or 0.0
        for name, column in COUNTED.items():
            self.counts[name] += bool(columns[column][i])
        divergence = columns["max_divergence"][i]
        if divergence is not None and (
            self.max_divergence is None or divergence > self.max_divergence
        ):
            self.max_divergence = divergence
        self.first = ts if self.first is None or ts < self.first else self.first
        self.last = ts if self.last is None or ts > self.last else self.last

    def values(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "sum_confidence": self.sum_confidence,
            "max_divergence": self.max_divergence,
            **self.counts,
        }


def record(session: Session, scores: ScoreTable, ids: list[int]) -> None:
    """Upsert rollups and activity for these scores and store their fingerprints."""
    if not ids:
        return
    columns = scores.columns
    rollups: dict[tuple, _Totals] = defaultdict(_Totals)
    activity: dict[tuple, _Totals] = defaultdict(_Totals)
    hourly: dict[tuple, _Totals] = defaultdict(_Totals)
    for i in range(len(ids)):
        key = (columns["source"][i], columns["model_name"][i], columns["model_version"][i])
        ts: datetime = columns["ts"][i]
        rollups[(*key, ts.replace(second=0, microsecond=0))].add(columns, i, ts)
        activity[key].add(columns, i, ts)
        hourly[(key[1], key[2], ts.replace(minute=0, second=0, microsecond=0))].add(columns, i, ts)
    _upsert(
        session,
        SourceRollup.__table__,
        [
            {"source": s, "model_name": m, "model_version": v, "bucket": b, **t.values()}
            for (s, m, v, b), t in rollups.items()
        ],
        ["source", "model_name", "model_version", "bucket"],
        {},
    )
    _upsert(
        session,
        ModelRollup.__table__,
        [
            {"model_name": m, "model_version": v, "bucket": b, **t.values()}
            for (m, v, b), t in hourly.items()
        ],
        ["model_name", "model_version", "bucket"],
        {},
    )
    now = utcnow()
    _upsert(
        session,
        SourceActivity.__table__,
        [
            {
                "source": s,
                "model_name": m,
                "model_version": v,
                **t.values(),
                "first_seen": t.first,
                "last_seen": t.last,
                "dirty": True,
                "updated_at": now,
            }
            for (s, m, v), t in activity.items()
        ],
        ["source", "model_name", "model_version"],
        {"first_seen": "least", "last_seen": "greatest", "dirty": "new", "updated_at": "new"},
    )
    fingerprints = columns.get("fingerprint")
    if fingerprints:
        session.execute(
            dialect_insert(session, InputFingerprint.__table__),
            [
                {
                    "score_id": ids[i],
                    "ts": columns["ts"][i],
                    "source": columns["source"][i],
                    "model_name": columns["model_name"][i],
                    "model_version": columns["model_version"][i],
                    "predicted": columns["predicted"][i],
                    "input_sha256": columns["input_sha256"][i],
                    "hashes": fingerprints[i],
                    "matched": False,
                }
                for i in range(len(ids))
            ],
        )


def _upsert(
    session: Session, table: Any, rows: list[dict[str, Any]], keys: list[str], extra: dict[str, Any]
) -> None:
    """INSERT ... ON CONFLICT DO UPDATE adding the counts (SQLite and PostgreSQL alike)."""
    if session.bind.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    statement = insert(table)
    new = statement.excluded
    updates: dict[str, Any] = {
        name: table.c[name] + new[name] for name in ("n", "sum_confidence", *COUNTED)
    }
    updates["max_divergence"] = _greatest(table.c.max_divergence, new.max_divergence)
    for name, how in extra.items():
        if how == "greatest":
            updates[name] = _greatest(table.c[name], new[name])
        elif how == "new":
            updates[name] = new[name]
        elif how == "least":
            updates[name] = case((new[name] < table.c[name], new[name]), else_=table.c[name])
    session.execute(statement.on_conflict_do_update(index_elements=keys, set_=updates), rows)


def _greatest(column: Any, new: Any) -> Any:
    return case((column.is_(None), new), (new > column, new), else_=column)
