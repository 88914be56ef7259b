"""Ingestion throughput end to end against the scoring floor.

    OMP_NUM_THREADS=1 python benchmarks/ingest.py [--postgres URL] [--batch-size 256]

End to end = reading JSON Lines, parsing and validating each record, scoring (confidence, the
calibrated squeezers, fingerprints), and committing scores, rollups, fingerprints and the file
position in one transaction per batch. The floor is the model
work alone: (1 + number of squeezers) batched forward passes per batch, measured in this run on
the same model, batch size and squeezers. Printed: records per second for both and their ratio,
for the 8×8 demo CNN and a 28×28 CNN (records carry nested-list arrays) and a small CNN on
3×224×224 colour images (records carry PNG files, base64: ``png_b64``) (medians of --repeats
runs), on SQLite and (with --postgres or ROBMON_TEST_POSTGRES_URL) PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._colour_data import write_npz
from benchmarks._timing import median_seconds, table
from monitor import architectures
from monitor.datasets import load_dataset
from monitor.training import train_classifier


def prepare_registry(home: Path):
    from monitor.config import load_settings
    from monitor.registry import DATASET_TAG, Registry

    settings = load_settings({"ROBMON_HOME": str(home)})
    registry = Registry(settings)
    refs = {}
    for name, (arch, dataset, epochs) in MODELS.items():
        train = load_dataset(dataset_path(home, dataset), "train")
        torch.manual_seed(0)
        model = architectures.ARCHITECTURES[arch]()
        train_classifier(model, train.x[:512], train.y[:512], epochs=epochs, lr=2e-3)
        refs[name] = registry.register_torch(
            model, f"bench-{name}", train.x[:2], tags={DATASET_TAG: dataset_path(home, dataset)}
        )
    return settings, registry, refs


# name: (architecture, dataset, training epochs)
MODELS = {
    "digits-cnn": ("digits-cnn", "digits", 10),
    "cnn28": ("cnn28", "digits28", 2),
    "small224": ("small-cnn-rgb", "photos224", 2),
}


def dataset_path(home: Path, dataset: str) -> str:
    """Built-in digits, or 600 colour photos at 224×224 (benchmarks/_colour_data.py)."""
    if dataset != "photos224":
        return dataset
    return str(write_npz(home.parent / "photos224.npz", 600, 224, 0, "test"))


def _input(image: torch.Tensor) -> dict:
    """Grey images as nested lists; colour images as PNG (what a 224×224 client sends)."""
    if image.shape[0] == 1:
        return {"array": image[0].tolist()}
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    array = (image * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"png_b64": base64.b64encode(buffer.getvalue()).decode()}


def write_log(path: Path, model: str, dataset: str, n: int) -> Path:
    data = load_dataset(dataset)
    inputs = [_input(data.x[i]) for i in range(min(n, len(data)))]
    with path.open("w") as handle:
        for i in range(n):
            handle.write(
                json.dumps(
                    {
                        "id": f"{path.stem}-{i}",
                        "ts": "2026-11-24T19:00:00Z",
                        "source": f"10.0.{i % 50}.{i % 7}",
                        "model": model,
                        "input": inputs[i % len(inputs)],
                    }
                )
                + "\n"
            )
    return path


def floor_records_per_second(ingester, ref, dataset: str, batch: int) -> tuple[float, int]:
    """Records/s of the model work alone: one batched call on inputs plus squeezed inputs."""
    model = ingester.models.get(ref)
    x = load_dataset(dataset).x[:batch]
    squeezed = torch.cat([x, *(s(x) for s in model.squeezers)])
    seconds = median_seconds(lambda: model.probabilities(squeezed), torch.device("cpu"), 7)
    return batch / seconds, len(model.squeezers)


def run(
    db_url: str, label: str, home: Path, settings, registry, refs, n: dict, batch: int, repeats: int
):
    from dataclasses import replace

    from monitor.calibrate import calibrate_model
    from monitor.db.session import open_database
    from monitor.ingest.pipeline import Ingester

    settings = replace(settings, db_url=db_url, embedded_db=True)
    db = open_database(settings)
    rows = []
    for name, (_, dataset, _) in MODELS.items():
        ref, dataset = refs[name], dataset_path(home, dataset)
        calibrate_model(db, registry, settings, ref, limit=200)
        ingester = Ingester(db, registry, settings, batch_size=batch)
        warm = write_log(home / f"warm-{name}-{label}.jsonl", ref.name, dataset, batch)
        ingester.ingest_files([str(warm)])  # model loaded, caches warm
        rates, floors = [], []
        for repeat in range(repeats):  # medians: this machine's speed drifts between runs
            floors.append(floor_records_per_second(ingester, ref, dataset, batch)[0])
            log = write_log(home / f"{name}-{label}-{repeat}.jsonl", ref.name, dataset, n[name])
            before = ingester.summary.scored
            started = time.perf_counter()
            ingester.ingest_files([str(log)])
            seconds = time.perf_counter() - started
            if ingester.summary.scored - before != n[name]:
                raise RuntimeError(f"scored {ingester.summary.scored - before} of {n[name]}")
            rates.append(n[name] / seconds)
        floor, squeezers = floor_records_per_second(ingester, ref, dataset, batch)
        floor = statistics.median([*floors, floor])
        e2e = statistics.median(rates)
        rows.append(
            (label, name, squeezers, f"{floor:,.0f}", f"{e2e:,.0f}", f"{100 * e2e / floor:.0f}%")
        )
    db.dispose()
    return rows


def postgres_database(server_url: str) -> tuple[str, callable]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = make_url(server_url).set(drivername="postgresql+psycopg")
    name = f"robmon_bench_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return admin.set(database=name).render_as_string(hide_password=False), drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--records", type=int, default=10240, help="for the 8×8 CNN")
    parser.add_argument("--records28", type=int, default=4096, help="for the 28×28 CNN")
    parser.add_argument("--records224", type=int, default=1024, help="for the 224×224 CNN")
    parser.add_argument("--postgres", default=os.environ.get("ROBMON_TEST_POSTGRES_URL"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (medians shown)")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    n = {"digits-cnn": args.records, "cnn28": args.records28, "small224": args.records224}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / ".robmon"
        settings, registry, refs = prepare_registry(home)
        rows = run(
            f"sqlite:///{home / 'bench.db'}",
            "SQLite",
            home,
            settings,
            registry,
            refs,
            n,
            args.batch_size,
            args.repeats,
        )
        if args.postgres:
            url, drop = postgres_database(args.postgres)
            try:
                common = (home, settings, registry, refs, n, args.batch_size, args.repeats)
                rows += run(url, "PostgreSQL", *common)
            finally:
                drop()
        else:
            print("(no --postgres URL: PostgreSQL skipped)")
    print(
        f"\nbatch {args.batch_size}; floor = (1 + squeezers) batched forward passes; "
        f"medians of {args.repeats} runs"
    )
    print(
        table(
            rows,
            ("database", "model", "squeezers", "floor rec/s", "end-to-end rec/s", "share of floor"),
        )
    )


if __name__ == "__main__":
    main()
