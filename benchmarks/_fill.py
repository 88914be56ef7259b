"""A store at volume for the benchmarks: synthetic scores written through the ingester's own
storage path (insert, rollups, fingerprints), without model work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

MODEL, VERSION = "bench-cnn", "1"


def synthetic_scores(
    rng, n: int, sources: int, start: datetime, span: timedelta, fingerprints: bool, offset: int
):
    from monitor.detect.fingerprints import to_bytes
    from monitor.ingest.store import ScoreTable

    seconds = np.sort(rng.uniform(0, span.total_seconds(), n))
    ts = [start + timedelta(seconds=float(s)) for s in seconds]
    confidence = rng.beta(20, 1, n)
    flagged = rng.random(n) < 0.03
    columns = {
        "received_at": [datetime.now(UTC)] * n,
        "ts": ts,
        "source": [
            f"10.{(k // 65536) % 256}.{(k // 256) % 256}.{k % 256}"
            for k in rng.integers(0, sources, n)
        ],
        "model_name": [MODEL] * n,
        "model_version": [VERSION] * n,
        "request_id": [f"r{offset + i}" for i in range(n)],
        "predicted": rng.integers(0, 10, n).tolist(),
        "confidence": confidence.tolist(),
        "margin": (confidence * 0.9).tolist(),
        "entropy": (1 - confidence).tolist(),
        "divergences": [{"bits:2": float(d)} for d in rng.exponential(0.1, n)],
        "max_divergence": rng.exponential(0.1, n).tolist(),
        "combined_score": rng.random(n).tolist(),
        "low_confidence": (confidence < 0.8).tolist(),
        "squeeze_suspicious": flagged.tolist(),
        "combined_suspicious": [False] * n,
        "strong_suspicious": [False] * n,
        "flagged": flagged.tolist(),
        "calibration_id": [None] * n,
        "input_sha256": [f"{offset + i:064x}" for i in range(n)],
        "origin": [None] * n,
        "kept_path": [None] * n,
    }
    if fingerprints:
        columns["fingerprint"] = [
            to_bytes(np.sort(rng.integers(0, 2**63, 45).astype(np.uint64))) for _ in range(n)
        ]
    return ScoreTable(columns)


def store(db, scores) -> None:
    from monitor.ingest import rollups
    from monitor.ingest.store import commit_batch

    commit_batch(db, scores, [], None, lambda s, ids: rollups.record(s, scores, ids))


def fill(db, stored: int, sources: int, now: datetime, seed: int = 0) -> None:
    """``stored`` scores over the week before ``now`` from ``sources`` sources; fingerprints for
    the last day; everything marked as already evaluated by the alert rules."""
    from sqlalchemy import update

    from monitor.db.models import DetectorCalibration, InputFingerprint, SourceActivity

    with db.session() as s:
        s.add(
            DetectorCalibration(
                model_name=MODEL,
                model_version=VERSION,
                dataset="synthetic",
                fpr=0.05,
                eps=0.1,
                thresholds={"confidence": 0.8, "squeeze": 0.3},
                report={},
                baseline={
                    "flagged": 0.03,
                    "flagged_worst": 0.05,
                    "low_confidence": 0.05,
                    "low_confidence_worst": 0.08,
                    "strong_suspicious": 0.001,
                    "strong_suspicious_worst": 0.003,
                    "min_shared": 11,
                },
            )
        )
    rng = np.random.default_rng(seed)
    week_start = now - timedelta(days=7)
    chunk = 50_000
    for offset in range(0, stored, chunk):
        n = min(chunk, stored - offset)
        span_start = week_start + timedelta(days=7) * offset / stored
        span = timedelta(days=7) * n / stored
        recent = span_start >= now - timedelta(days=1)
        store(db, synthetic_scores(rng, n, sources, span_start, span, recent, offset))
    with db.session() as s:
        s.execute(update(InputFingerprint).values(matched=True))
        s.execute(update(SourceActivity).values(dirty=False))
