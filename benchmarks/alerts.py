"""Alert evaluation cost at volume, and the detection table of the simulated stream.

    OMP_NUM_THREADS=1 python benchmarks/alerts.py [--postgres URL] [--stored 1000000]

1. Volume: a database holding ``--stored`` scores (one week of record time) from ``--sources``
   sources, with the per-minute rollups and last-day fingerprints the ingester keeps; then
   10,000 new scores spread over all sources, and one evaluation timed (a cold one that builds
   the fingerprint index, then a warm one after another 10,000). Scores are written through the
   ingester's own storage path (insert + rollups + fingerprints), without model work.
2. Detection: streams of ``monitor/simulate.py`` (profiles ``fast`` and ``full``: benign sources
   drawing popular pictures from a shared pool through noisy, blurred and JPEG cameras; every
   attacker kind at three paces) on ``digits`` and ``digits28``, each replayed in batch mode
   (ingested whole, one evaluation) and streaming mode (chunks of 100, an evaluation after
   each): attacker kinds caught, spread addresses named, benign sources alerted, and the records
   an attacker had sent when its first incident opened.
"""

from __future__ import annotations

import argparse
import os
import shutil
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
from monitor.alerts.replay import replay


def volume(db_url: str, label: str, stored: int, sources: int) -> list[tuple]:

    from monitor.alerts.evaluate import Evaluator
    from monitor.alerts.settings import AlertSettings
    from monitor.config import load_settings
    from monitor.db.session import open_database

    settings = replace(
        load_settings({"ROBMON_HOME": tempfile.mkdtemp()}), db_url=db_url, embedded_db=True
    )
    db = open_database(settings)
    now = (datetime.now(UTC) - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)
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


def detection(profiles: list[str], datasets: list[str], seed: int) -> list[tuple]:
    """Every (data set, profile) stream replayed in batch and streaming mode."""
    rows = []
    for dataset in datasets:
        home = Path(tempfile.mkdtemp()) / ".robmon"
        _, db, registry, model = _store(home, dataset)
        target = registry.load(registry.resolve(f"models:/{model}/1")).module
        surrogate = registry.load(registry.resolve(f"models:/{model}/2")).module
        for profile in profiles:
            traffic = simulate_stream(dataset, target, surrogate, model, profile, seed)
            for mode in ("batch", "streaming"):
                fresh = Path(tempfile.mkdtemp()) / ".robmon"
                fresh.mkdir()
                for name in ("mlflow.db", "robmon.db"):
                    shutil.copy(home / name, fresh / name)
                s2, db2, registry2 = _context(fresh)
                started = time.perf_counter()
                outcome = replay(traffic, db2, registry2, s2, mode)
                rows.append(_detection_row(dataset, profile, mode, traffic, outcome, started))
                db2.dispose()
        db.dispose()
    return rows


def simulate_stream(dataset, target, surrogate, model, profile, seed):
    from monitor.datasets import load_dataset
    from monitor.simulate import simulate

    return simulate(
        load_dataset(dataset, "all"), target, surrogate, model=model, profile=profile, seed=seed
    )


def _detection_row(dataset, profile, mode, traffic, outcome, started) -> tuple:
    named, total = 0, 0
    for kind in {k for k in outcome.kinds if k.startswith("query-distributed")}:
        n, t = outcome.named_of(kind)
        named, total = named + n, total + t
    first = sorted(outcome.first.values())
    return (
        f"{dataset} {profile}",
        mode,
        f"{len(traffic.records):,}",
        f"{len(outcome.caught())} of {len(outcome.kinds)}",
        ", ".join(outcome.missed()) or "-",
        f"{named} of {total}",
        f"{len(outcome.benign_alerted())} of {len(outcome.benign)}",
        f"{first[len(first) // 2]} / {first[-1]}" if first else "-",
        f"{time.perf_counter() - started:.0f} s",
    )


def _context(home: Path):
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.registry import Registry

    settings = load_settings({"ROBMON_HOME": str(home)})
    return settings, open_database(settings), Registry(settings)


def _store(home: Path, dataset: str):
    """A store with a calibrated target (v1) and a surrogate (v2) for ``dataset``."""
    from monitor.architectures import cnn28
    from monitor.calibrate import calibrate_model
    from monitor.demo import register_trained, seed_demo_models

    settings, db, registry = _context(home)
    if dataset == "digits":
        models = seed_demo_models(registry)
        calibrate_model(db, registry, settings, models[0].ref)
        return settings, db, registry, "digits-cnn"
    target, _ = register_trained(registry, "digits28-cnn", dataset, cnn28, epochs=6, seed=0)
    register_trained(registry, "digits28-cnn", dataset, cnn28, epochs=6, seed=1)
    registry.set_alias("digits28-cnn", "champion", target.version)
    calibrate_model(db, registry, settings, target)
    return settings, db, registry, "digits28-cnn"


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
    parser.add_argument("--profiles", default="fast,full", help="simulate.py profiles")
    parser.add_argument("--datasets", default="digits,digits28")
    parser.add_argument("--seed", type=int, default=0)
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
        print(
            "\ndetection on simulated streams (monitor/simulate.py), batch: ingested whole then "
            "one evaluation; streaming: chunks of 100 records, an evaluation after each"
        )
        rows = detection(args.profiles.split(","), args.datasets.split(","), args.seed)
        print(
            table(
                rows,
                (
                    "stream",
                    "mode",
                    "records",
                    "attacker kinds caught",
                    "missed",
                    "spread addresses named",
                    "benign alerted",
                    "records to first incident (median / max)",
                    "replay",
                ),
            )
        )


if __name__ == "__main__":
    main()
