"""Scale-out of ingestion on a Redis Stream consumer group, against PostgreSQL.

    OMP_NUM_THREADS=1 python benchmarks/scale.py --postgres URL [--redis redis://127.0.0.1:6379/15]

Printed, measured in this run:
1. records per second with 1 and with 2 `robmon ingest --redis-stream` processes on one stream
   (each its own process, as deployed; records published up front, time from the first entry to
   the last commit, models loaded beforehand), and the speed-up of 2 over 1;
2. ingest lag under a steady load at --load (default 50%) of the single-ingester rate: for every
   record, the time from its stream entry (XADD) to its score's row (p50, p95, max).

The 8×8 demo CNN with its calibrated squeezer, batch 256. On a machine with few cores the
ingesters share them with PostgreSQL, Redis and the publisher: read the speed-up with that in mind.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks._timing import table
from benchmarks.ingest import postgres_database
from monitor import architectures
from monitor.datasets import load_dataset
from monitor.training import train_classifier


def prepare(home: Path, db_url: str):
    from dataclasses import replace

    from monitor.calibrate import calibrate_model
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.registry import DATASET_TAG, Registry

    settings = load_settings({"ROBMON_HOME": str(home)})
    registry = Registry(settings)
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = architectures.ARCHITECTURES["digits-cnn"]()
    train_classifier(model, train.x, train.y, epochs=10, lr=2e-3)
    ref = registry.register_torch(model, "scale-cnn", train.x[:2], tags={DATASET_TAG: "digits"})
    db = open_database(replace(settings, db_url=db_url, embedded_db=True))
    calibrate_model(db, registry, settings, ref)
    return db, ref


def bodies(model: str, n: int, offset: int = 0) -> list[bytes]:
    import orjson

    data = load_dataset("digits")
    return [
        orjson.dumps(
            {
                "id": f"r{offset + i}",
                "ts": "2026-11-24T19:00:00Z",
                "source": f"10.0.{i % 50}.{i % 7}",
                "model": model,
                "input": {"array": data.x[i % len(data)][0].tolist()},
            }
        )
        for i in range(n)
    ]


def publish(client, stream: str, items: list[bytes]) -> None:
    for start in range(0, len(items), 1000):
        pipe = client.pipeline(transaction=False)
        for body in items[start : start + 1000]:
            pipe.xadd(stream, {"record": body})
        pipe.execute()


def count(db) -> int:
    from sqlalchemy import func, select

    from monitor.db.models import InputScore

    with db.session() as s:
        return s.scalar(select(func.count()).select_from(InputScore))


def wait_count(db, target: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while count(db) < target:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {count(db)} of {target} records scored")
        time.sleep(0.05)


def start_ingesters(k: int, stream_url: str, group: str, env: dict, logs: Path) -> list:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monitor",
                "ingest",
                "--redis-stream",
                stream_url,
                "--group",
                group,
                "--consumer",
                f"c{i}",
                "--batch-size",
                "256",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(logs / f"{group}-c{i}.log").open("wb"),
            env=env,
        )
        for i in range(k)
    ]


def stop(processes: list) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        process.wait(timeout=60)


def throughput(k, n, db, client, redis_url, ref, env, logs) -> float:
    """Records/s of k ingesters over n records published up front (after a warm-up)."""
    stream = f"bench-{uuid.uuid4().hex[:6]}"
    processes = start_ingesters(k, f"{redis_url}/{stream}", "g", env, logs)
    try:
        base = count(db)
        publish(client, stream, bodies(ref.name, 256 * k, offset=10**7 + base))  # warm-up
        wait_count(db, base + 256 * k)
        base = count(db)
        items = bodies(ref.name, n, offset=base)
        started = time.perf_counter()
        publish(client, stream, items)
        wait_count(db, base + n)
        return n / (time.perf_counter() - started)
    finally:
        stop(processes)
        client.delete(stream)


def lag_under_load(rate, seconds, db, client, redis_url, ref, env, logs) -> list[float]:
    """Entry-to-row seconds of every record sent at ``rate`` records/s for ``seconds``."""
    from sqlalchemy import select

    from monitor.db.models import InputScore

    stream = f"bench-{uuid.uuid4().hex[:6]}"
    processes = start_ingesters(1, f"{redis_url}/{stream}", "lag", env, logs)
    try:
        base = count(db)
        publish(client, stream, bodies(ref.name, 256, offset=2 * 10**7 + base))  # warm-up
        wait_count(db, base + 256)
        base = count(db)
        n = int(rate * seconds)
        items = bodies(ref.name, n, offset=3 * 10**7 + base)
        started, chunk = time.perf_counter(), max(1, int(rate / 20))  # 20 sends per second
        for i in range(0, n, chunk):
            publish(client, stream, items[i : i + chunk])
            pause = started + (i + chunk) / rate - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
        wait_count(db, base + n)
        with db.session() as s:
            rows = s.execute(
                select(InputScore.origin, InputScore.received_at).where(
                    InputScore.origin.like(f"{stream}:%"),
                    InputScore.request_id.like("r3%"),
                )
            ).all()
    finally:
        stop(processes)
        client.delete(stream)
    lags = []
    for origin, received in rows:
        entry_ms = int(origin.rsplit(":", 1)[1].split("-")[0])
        lags.append(received.timestamp() - entry_ms / 1000)
    return sorted(lags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("ROBMON_TEST_POSTGRES_URL"))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--records", type=int, default=20480)
    parser.add_argument("--load", type=float, default=0.5, help="share of the 1-ingester rate")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the steady load")
    args = parser.parse_args()
    if not args.postgres:
        parser.error("--postgres URL (or ROBMON_TEST_POSTGRES_URL) is required")
    import redis

    client = redis.Redis.from_url(args.redis)
    client.ping()
    url, drop = postgres_database(args.postgres)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / ".robmon"
        logs = Path(tmp)
        try:
            db, ref = prepare(home, url)
            env = {
                **os.environ,
                "ROBMON_HOME": str(home),
                "ROBMON_DB_URL": url,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            }
            rates = {
                k: throughput(k, args.records, db, client, args.redis, ref, env, logs)
                for k in (1, 2)
            }
            lags = lag_under_load(
                args.load * rates[1], args.seconds, db, client, args.redis, ref, env, logs
            )
            db.dispose()
        finally:
            drop()
    cores = os.cpu_count()
    print(f"\n8×8 demo CNN (1 squeezer), batch 256, {args.records} records, {cores} CPU cores")
    print(
        table(
            [(k, f"{rates[k]:,.0f}", f"{rates[k] / rates[1]:.2f}×") for k in (1, 2)],
            ("ingesters", "records/s", "speed-up"),
        )
    )
    q = statistics.quantiles(lags, n=100)
    print(
        f"\nsteady load {args.load * rates[1]:,.0f} records/s ({args.load:.0%} of one ingester) "
        f"for {args.seconds:.0f} s, one ingester: lag from XADD to stored score "
        f"p50 {q[49]:.3f} s, p95 {q[94]:.3f} s, max {lags[-1]:.3f} s over {len(lags)} records"
    )


if __name__ == "__main__":
    main()
