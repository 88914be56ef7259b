"""What the ingester keeps beside each batch's scores, in the same transaction: per-minute
rollups and per-source totals (read by the alert rules and the dashboard instead of scanning
``input_scores``), and the inputs' fingerprints (read by the probing rule).

The rollups are computed by the database from the rows just inserted (one ``INSERT ... SELECT
... GROUP BY ... ON CONFLICT DO UPDATE`` per table), so no per-row work is done in Python and
nothing but the new ids crosses the wire a second time.
"""

from __future__ import annotations

from functools import cache

import orjson
from sqlalchemy.orm import Session

from monitor.db.types import utcnow
from monitor.ingest.store import ScoreTable, driver_insert, driver_value

FINGERPRINT_COLUMNS = (
    "score_id",
    "ts",
    "source",
    "model_name",
    "model_version",
    "predicted",
    "input_sha256",
    "hashes",
    "matched",
)
_TOTALS = ("n", "sum_confidence", "flagged", "low_confidence", "strong", "max_divergence")
_AGGREGATES = (
    "count(*)",
    "sum(coalesce(confidence, 0.0))",
    "sum(CASE WHEN flagged THEN 1 ELSE 0 END)",
    "sum(CASE WHEN low_confidence THEN 1 ELSE 0 END)",
    "sum(CASE WHEN strong_suspicious THEN 1 ELSE 0 END)",
    "max(max_divergence)",
)
_MERGE = {
    "add": "{t}.{c} + excluded.{c}",
    "greatest": "CASE WHEN {t}.{c} IS NULL OR excluded.{c} > {t}.{c} THEN excluded.{c} "
    "ELSE {t}.{c} END",
    "least": "CASE WHEN {t}.{c} IS NULL OR excluded.{c} < {t}.{c} THEN excluded.{c} "
    "ELSE {t}.{c} END",
    "new": "excluded.{c}",
}
# time buckets of ``ts``, as each database stores them (SQLite: SQLAlchemy's text format)
_BUCKETS = {
    "postgresql": {
        "minute": "date_trunc('minute', ts, 'UTC')",
        "hour": "date_trunc('hour', ts, 'UTC')",
    },
    "sqlite": {
        "minute": "substr(ts, 1, 16) || ':00.000000'",
        "hour": "substr(ts, 1, 13) || ':00:00.000000'",
    },
}


def record(session: Session, scores: ScoreTable, ids: list[int]) -> None:
    """Upsert rollups and activity for the scores just inserted as ``ids``; store their
    fingerprints."""
    if not ids:
        return
    dialect = session.bind.dialect.name
    connection = session.connection()
    chosen = (ids,) if dialect == "postgresql" else (orjson.dumps(ids).decode(),)
    source_rollups, model_rollups, activity = _statements(dialect)
    connection.exec_driver_sql(source_rollups, chosen)
    connection.exec_driver_sql(model_rollups, chosen)
    connection.exec_driver_sql(activity, (driver_value(dialect, utcnow()), *chosen))
    fingerprints = scores.columns.get("fingerprint")
    if fingerprints:
        columns = scores.columns
        driver_insert(
            session,
            "input_fingerprints",
            FINGERPRINT_COLUMNS,
            list(
                zip(
                    ids,
                    columns["ts"],
                    columns["source"],
                    columns["model_name"],
                    columns["model_version"],
                    columns["predicted"],
                    columns["input_sha256"],
                    fingerprints,
                    [False] * len(ids),
                    strict=True,
                )
            ),
        )


@cache
def _statements(dialect: str) -> tuple[str, str, str]:
    """The three upserts' SQL for ``dialect`` (constant text, so statements are prepared once)."""
    mark = "%s" if dialect == "postgresql" else "?"
    where = "id = ANY(%b)" if dialect == "postgresql" else "id IN (SELECT value FROM json_each(?))"
    buckets = _BUCKETS.get(dialect)
    if buckets is None:
        raise ValueError(f"rollups are written for PostgreSQL and SQLite, not {dialect}.")
    totals = {c: "add" for c in _TOTALS} | {"max_divergence": "greatest"}

    def upsert(table: str, keys: list[str], extra: dict[str, tuple[str, str]]) -> str:
        """``keys``: (name, expression) pairs; ``extra``: column -> (expression, merge)."""
        names = [k for k, _ in keys]
        columns = [*names, *_TOTALS, *extra]
        selected = [e for _, e in keys] + list(_AGGREGATES) + [e for e, _ in extra.values()]
        merge = totals | {c: how for c, (_, how) in extra.items()}
        updates = ", ".join(f"{c} = " + _MERGE[merge[c]].format(t=table, c=c) for c in merge)
        groups = ", ".join(str(i + 1) for i in range(len(keys)))
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(selected)} "
            f"FROM input_scores WHERE {where} GROUP BY {groups} "
            f"ON CONFLICT ({', '.join(names)}) DO UPDATE SET {updates}"
        )

    series = [(c, c) for c in ("source", "model_name", "model_version")]
    return (
        upsert("source_rollups", [*series, ("bucket", buckets["minute"])], {}),
        upsert("model_rollups", [*series[1:], ("bucket", buckets["hour"])], {}),
        upsert(
            "source_activity",
            series,
            {
                "first_seen": ("min(ts)", "least"),
                "last_seen": ("max(ts)", "greatest"),
                "dirty": ("true" if dialect == "postgresql" else "1", "new"),
                "updated_at": (mark, "new"),
            },
        ),
    )
