"""The rollups the database computes per batch equal the same totals computed from the scores in
Python, across batches that land in the same buckets, on SQLite and PostgreSQL."""

from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select

from monitor.db.models import InputFingerprint, ModelRollup, SourceActivity, SourceRollup
from monitor.db.session import open_database
from monitor.ingest import rollups
from monitor.ingest.store import ScoreTable, commit_batch

START = datetime(2026, 11, 24, 18, 58, 30, tzinfo=UTC)  # batches straddle minute and hour ends


def batch(rng: np.random.Generator, n: int, offset: int) -> ScoreTable:
    ts = [START + timedelta(seconds=float(s)) for s in rng.uniform(0, 240, n)]
    confidence = rng.uniform(0.3, 1.0, n)
    flagged = rng.random(n) < 0.3
    divergence = [None if rng.random() < 0.2 else float(d) for d in rng.exponential(0.1, n)]
    return ScoreTable(
        {
            "received_at": [START] * n,
            "ts": ts,
            "source": [f"s{k}" for k in rng.integers(0, 4, n)],
            "model_name": ["m"] * n,
            "model_version": [str(v) for v in rng.integers(1, 3, n)],
            "request_id": [f"r{offset + i}" for i in range(n)],
            "predicted": rng.integers(0, 10, n).tolist(),
            "confidence": confidence.tolist(),
            "margin": [0.5] * n,
            "entropy": [0.1] * n,
            "divergences": [{"bits:2": d} for d in divergence],
            "max_divergence": divergence,
            "combined_score": [None] * n,
            "low_confidence": (confidence < 0.6).tolist(),
            "squeeze_suspicious": flagged.tolist(),
            "combined_suspicious": [False] * n,
            "strong_suspicious": (rng.random(n) < 0.1).tolist(),
            "flagged": flagged.tolist(),
            "calibration_id": [None] * n,
            "input_sha256": [f"{offset + i:064x}" for i in range(n)],
            "origin": [None] * n,
            "kept_path": [None] * n,
            "fingerprint": [bytes([i % 256]) * 16 for i in range(n)],
        }
    )


def expected(tables: list[ScoreTable], key) -> dict[tuple, dict]:
    totals: dict[tuple, dict] = defaultdict(
        lambda: {"n": 0, "sum": 0.0, "flagged": 0, "low": 0, "strong": 0, "max": None, "ts": []}
    )
    for table in tables:
        for row in table.rows():
            t = totals[key(row)]
            t["n"] += 1
            t["sum"] += row["confidence"]
            t["flagged"] += row["flagged"]
            t["low"] += row["low_confidence"]
            t["strong"] += row["strong_suspicious"]
            if row["max_divergence"] is not None:
                t["max"] = max(t["max"] or 0.0, row["max_divergence"])
            t["ts"].append(row["ts"])
    return totals


def stored(row) -> tuple:
    return (row.n, row.flagged, row.low_confidence, row.strong)


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def test_rollups_match_the_scores(db_url, settings) -> None:
    db = open_database(replace(settings, db_url=db_url, embedded_db=True))
    rng = np.random.default_rng(3)
    tables = [batch(rng, 150, 150 * i) for i in range(3)]
    for table in tables:
        commit_batch(db, table, [], None, lambda s, ids, t=table: rollups.record(s, t, ids))

    minute = expected(
        tables,
        lambda r: (r["source"], r["model_version"], r["ts"].replace(second=0, microsecond=0)),
    )
    hour = expected(
        tables, lambda r: (r["model_version"], r["ts"].replace(minute=0, second=0, microsecond=0))
    )
    activity = expected(tables, lambda r: (r["source"], r["model_version"]))
    with db.session() as s:
        got = {
            (r.source, r.model_version, aware(r.bucket)): r for r in s.scalars(select(SourceRollup))
        }
        assert set(got) == set(minute) and len(got) > 12  # 4 sources × 2 versions × ≥2 minutes
        for key, want in minute.items():
            assert stored(got[key]) == (want["n"], want["flagged"], want["low"], want["strong"])
            assert got[key].sum_confidence == pytest.approx(want["sum"])
            assert got[key].max_divergence == pytest.approx(want["max"])

        got = {(r.model_version, aware(r.bucket)): r for r in s.scalars(select(ModelRollup))}
        assert set(got) == set(hour) and len(got) == 4  # two versions × hours 18 and 19
        for key, want in hour.items():
            assert stored(got[key]) == (want["n"], want["flagged"], want["low"], want["strong"])

        got = {(r.source, r.model_version): r for r in s.scalars(select(SourceActivity))}
        assert set(got) == set(activity)
        for key, want in activity.items():
            row = got[key]
            assert stored(row) == (want["n"], want["flagged"], want["low"], want["strong"])
            assert (aware(row.first_seen), aware(row.last_seen)) == (
                min(want["ts"]),
                max(want["ts"]),
            )
            assert row.dirty

        fingerprints = s.scalars(select(InputFingerprint).order_by(InputFingerprint.score_id))
        assert [f.hashes for f in fingerprints] == [
            f for t in tables for f in t.column("fingerprint")
        ]
    db.dispose()
