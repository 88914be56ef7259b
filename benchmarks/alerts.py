"""Alert evaluation cost at volume, and the detection table of the simulated stream.

    OMP_NUM_THREADS=1 python benchmarks/alerts.py [--postgres URL] [--stored 1000000]

1. Volume: a database holding ``--stored`` scores (one week of record time) from ``--sources``
   sources, with the per-minute rollups and last-day fingerprints the ingester keeps; then
   10,000 new scores spread over all sources, and one evaluation timed (a cold one that builds
   the fingerprint index, then a warm one after another 10,000). Scores are written through the
   ingester's own storage path (insert + rollups + fingerprints), without model work.
2. Detection: the simulated stream of the tests (30 benign sources, one attacker of each kind)
   ingested in chunks of 50 records with an evaluation after each: records each attacker sent
   before its first alert, and how many benign sources were alerted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._fill import fill, store, synthetic_scores
from benchmarks._timing import table


def volume(db_url: str, label: str, stored: int, sources: int) -> list[tuple]:

    from monitor.alerts.evaluate import Evaluator
    from monitor.alerts.settings import AlertSettings
    from monitor.config import load_settings
    from monitor.db.session import open_database

    settings = replace(
        load_settings({"ROBMON_HOME": tempfile.mkdtemp()}), db_url=db_url, embedded_db=True
    )
    db = open_database(settings)
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    started = time.perf_counter()
    fill(db, stored, sources, now)
    load_seconds = time.perf_counter() - started
    rng = np.random.default_rng(1)
    evaluator = Evaluator(db, AlertSettings.from_settings(settings), "bench")
    rows = []
    for round_ in ("cold", "warm"):
        fresh = synthetic_scores(
            rng,
            10_000,
            sources,
            now,
            timedelta(minutes=5),
            True,
            stored + (0 if round_ == "cold" else 10_000),
        )
        store(db, fresh)
        result = evaluator.evaluate()
        rows.append(
            (
                label,
                f"{stored:,}",
                f"{sources:,}",
                round_,
                result.sources,
                f"{result.seconds:.2f} s",
                f"{load_seconds:.0f} s",
            )
        )
        now += timedelta(minutes=5)
    db.dispose()
    return rows


def detection() -> list[tuple]:
    import torch

    from monitor.alerts.evaluate import Evaluator
    from monitor.alerts.queries import get_alert, list_alerts
    from monitor.alerts.settings import AlertSettings
    from monitor.calibrate import calibrate_model
    from monitor.config import load_settings
    from monitor.datasets import load_dataset
    from monitor.db.session import open_database
    from monitor.demo import seed_demo_models
    from monitor.ingest.pipeline import Ingester
    from monitor.ingest.sources import RawLine
    from monitor.registry import Registry
    from monitor.simulate import simulate

    settings = load_settings({"ROBMON_HOME": tempfile.mkdtemp()})
    registry = Registry(settings)
    models = seed_demo_models(registry)
    db = open_database(settings)
    calibrate_model(db, registry, settings, models[0].ref)
    target = registry.load(models[0].ref).module
    surrogate = registry.load(models[1].ref).module
    traffic = simulate(load_dataset("digits", "all"), target, surrogate)
    ingester = Ingester(db, registry, settings)
    evaluator = Evaluator(db, AlertSettings.from_settings(settings), "bench")
    kinds = traffic.attacker_addresses()
    sent: dict[str, int] = {}
    first: dict[str, tuple[str, int]] = {}
    lines = traffic.lines()
    for start in range(0, len(lines), 50):
        chunk = lines[start : start + 50]
        ingester.process(
            [
                RawLine("sim", start + i + 1, 0, 0, line.encode(), len(line))
                for i, line in enumerate(chunk)
            ],
            None,
        )
        for record in traffic.records[start : start + 50]:
            kind = kinds.get(record["source"], "benign")
            sent[kind] = sent.get(kind, 0) + 1
        evaluator.evaluate()
        for alert in list_alerts(db, limit=1000):
            for address in get_alert(db, alert.id).evidence.get("sources") or [alert.source]:
                kind = kinds.get(address, "benign")
                if kind == "benign":
                    first.setdefault(f"benign {address}", (alert.rule, sent["benign"]))
                elif kind not in first:
                    first[kind] = (alert.rule, sent[kind])
    rows = [
        (
            kind,
            first.get(kind, ("never", "-"))[0],
            first.get(kind, ("", "-"))[1],
            sum(1 for s in traffic.sources if s.kind == kind for _ in s.images),
        )
        for kind in ("fgsm", "pgd", "transfer", "query", "query-distributed", "mixed")
    ]
    benign = [k for k in first if k.startswith("benign")]
    rows.append(
        ("benign sources alerted", f"{len(benign)} of {len(traffic.benign_addresses())}", "", "")
    )
    torch.set_num_threads(torch.get_num_threads())
    return rows


def postgres_database(server_url: str):
    from benchmarks.ingest import postgres_database as create

    return create(server_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--postgres", default=os.environ.get("ROBMON_TEST_POSTGRES_URL"))
    parser.add_argument("--skip-volume", action="store_true")
    parser.add_argument("--skip-detection", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if not args.skip_volume:
        with tempfile.TemporaryDirectory() as tmp:
            rows = volume(f"sqlite:///{tmp}/bench.db", "SQLite", args.stored, args.sources)
        if args.postgres:
            url, drop = postgres_database(args.postgres)
            try:
                rows += volume(url, "PostgreSQL", args.stored, args.sources)
            finally:
                drop()
        print("\nevaluation per 10,000 new scores")
        print(
            table(
                rows,
                (
                    "database",
                    "stored scores",
                    "sources",
                    "index",
                    "sources tested",
                    "evaluation",
                    "loading the store",
                ),
            )
        )
    if not args.skip_detection:
        print("\ndetection on the simulated stream (chunks of 50 records, evaluation after each)")
        print(
            table(
                detection(),
                ("attacker", "first alert", "its records until alert", "its records in all"),
            )
        )


if __name__ == "__main__":
    main()
