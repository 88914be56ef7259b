"""Ingestion throughput end to end against the scoring floor.

    OMP_NUM_THREADS=1 python benchmarks/ingest.py [--postgres URL] [--batch-size 256]
    OMP_NUM_THREADS=1 python benchmarks/ingest.py --models resnet224 --records-resnet224 64
    python benchmarks/ingest.py --device cuda --batch-size-resnet224 256 --records-resnet224 4096

End to end = reading JSON Lines, parsing and validating each record, scoring (confidence, the
calibrated squeezers, fingerprints), and committing scores, rollups, fingerprints and the file
position in one transaction per batch. The floor is the model
work alone: (1 + number of squeezers) batched forward passes per batch, measured in this run on
the same model, batch size and squeezers. Printed: records per second for both and their ratio,
for the 8×8 demo CNN and a 28×28 CNN (records carry nested-list arrays), a small CNN on
3×224×224 colour images, and two ResNet-18s with random weights (speed is measured, not
accuracy): the CIFAR variant on 3×32×32 and the ImageNet variant on 3×224×224 (colour records
carry PNG files, base64: ``png_b64``) (medians of --repeats runs), on SQLite and (with
--postgres or ROBMON_TEST_POSTGRES_URL) PostgreSQL. The 224×224 ResNet runs at a smaller batch
and record count by default (``--batch-size-resnet224``, ``--records-resnet224`` scale it up on
a GPU machine, with ``--device cuda``).
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


def prepare_registry(home: Path, names: list[str]):
    from monitor.config import load_settings
    from monitor.registry import DATASET_TAG, Registry

    settings = load_settings({"ROBMON_HOME": str(home)})
    registry = Registry(settings)
    refs = {}
    for name in names:
        arch, dataset, epochs, _ = MODELS[name]
        train = load_dataset(dataset_path(home, dataset), "train")
        torch.manual_seed(0)
        model = architectures.ARCHITECTURES[arch]()
        if epochs:
            train_classifier(model, train.x[:512], train.y[:512], epochs=epochs, lr=2e-3)
        refs[name] = registry.register_torch(
            model.eval(),
            f"bench-{name}",
            train.x[:2],
            tags={DATASET_TAG: dataset_path(home, dataset)},
        )
    return settings, registry, refs


# name: (architecture, dataset, training epochs (0: random weights), calibration images and
# eps (None: the default grid; the ResNets calibrate on fewer images at one eps: crafting the
# calibration's attacks costs far more than ingesting on a CPU, and it is not what is measured)
MODELS = {
    "digits-cnn": ("digits-cnn", "digits", 10, (200, None)),
    "cnn28": ("cnn28", "digits28", 2, (200, None)),
    "small224": ("small-cnn-rgb", "photos224", 2, (200, None)),
    "resnet32": ("resnet18", "photos32", 0, (60, 8 / 255)),
    "resnet224": ("resnet18-imagenet", "photos224", 0, (20, 8 / 255)),
}
PHOTOS = {"photos32": 32, "photos224": 224}


def dataset_path(home: Path, dataset: str) -> str:
    """Built-in digits, or 600 colour photos at 32×32 or 224×224 (benchmarks/_colour_data.py)."""
    if dataset not in PHOTOS:
        return dataset
    size = PHOTOS[dataset]
    return str(write_npz(home.parent / f"{dataset}.npz", 600, size, 0, "test"))


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


def floor_records_per_second(
    ingester, ref, dataset: str, batch: int, device: torch.device
) -> tuple[float, int]:
    """Records/s of the model work alone: one batched call on inputs plus squeezed inputs."""
    model = ingester.models.get(ref)
    x = load_dataset(dataset).x[:batch]
    squeezed = torch.cat([x, *(s(x) for s in model.squeezers)])
    seconds = median_seconds(lambda: model.probabilities(squeezed), device, 7)
    return batch / seconds, len(model.squeezers)


def run(db_url: str, label: str, home: Path, settings, registry, refs, options) -> list[tuple]:
    """One row per model: floor and end-to-end records/s on the database at ``db_url``."""
    from dataclasses import replace

    from monitor.db.session import open_database

    settings = replace(settings, db_url=db_url, embedded_db=True)
    db = open_database(settings)
    rows = [
        bench_model(db, registry, settings, home, name, refs[name], label, options) for name in refs
    ]
    db.dispose()
    return rows


def bench_model(db, registry, settings, home: Path, name: str, ref, label: str, options) -> tuple:
    """Calibrate, warm up, then ingest ``--repeats`` logs of one model, with the floor measured
    between them (this machine's speed drifts between runs: medians of both)."""
    from monitor.calibrate import calibrate_model
    from monitor.ingest.pipeline import Ingester

    _, dataset, _, (calibration, eps) = MODELS[name]
    dataset, n, batch = dataset_path(home, dataset), options.records[name], options.batch[name]
    device = torch.device(options.device)
    calibrate_model(db, registry, settings, ref, limit=calibration, eps=eps, device=options.device)
    ingester = Ingester(db, registry, settings, batch_size=batch, device=options.device)
    warm = write_log(home / f"warm-{name}-{label}.jsonl", ref.name, dataset, batch)
    ingester.ingest_files([str(warm)])  # model loaded, caches warm
    rates, floors = [], []
    for repeat in range(options.repeats):
        floors.append(floor_records_per_second(ingester, ref, dataset, batch, device)[0])
        log = write_log(home / f"{name}-{label}-{repeat}.jsonl", ref.name, dataset, n)
        before = ingester.summary.scored
        started = time.perf_counter()
        ingester.ingest_files([str(log)])
        seconds = time.perf_counter() - started
        if ingester.summary.scored - before != n:
            raise RuntimeError(f"scored {ingester.summary.scored - before} of {n}")
        rates.append(n / seconds)
    floor, squeezers = floor_records_per_second(ingester, ref, dataset, batch, device)
    floor = statistics.median([*floors, floor])
    e2e = statistics.median(rates)
    return (
        label,
        name,
        batch,
        squeezers,
        f"{floor:,.1f}",
        f"{e2e:,.1f}",
        f"{100 * e2e / floor:.0f}%",
    )


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


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batch-size-resnet224", type=int, default=32)
    parser.add_argument("--records", type=int, default=10240, help="for the 8×8 CNN")
    parser.add_argument("--records28", type=int, default=4096, help="for the 28×28 CNN")
    parser.add_argument("--records224", type=int, default=1024, help="for the 224×224 CNN")
    parser.add_argument("--records-resnet32", type=int, default=1024)
    parser.add_argument("--records-resnet224", type=int, default=128)
    parser.add_argument("--models", default=",".join(MODELS), help="of " + ", ".join(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--postgres", default=os.environ.get("ROBMON_TEST_POSTGRES_URL"))
    parser.add_argument("--repeats", type=int, default=3, help="runs per row (medians shown)")
    options = parser.parse_args()
    options.names = options.models.split(",")
    for name in options.names:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    options.records = {
        "digits-cnn": options.records,
        "cnn28": options.records28,
        "small224": options.records224,
        "resnet32": options.records_resnet32,
        "resnet224": options.records_resnet224,
    }
    options.batch = {name: options.batch_size for name in MODELS}
    options.batch["resnet224"] = options.batch_size_resnet224
    return options


def main() -> None:
    options = parse_options()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / ".robmon"
        settings, registry, refs = prepare_registry(home, options.names)
        common = (home, settings, registry, refs, options)
        rows = run(f"sqlite:///{home / 'bench.db'}", "SQLite", *common)
        if options.postgres:
            url, drop = postgres_database(options.postgres)
            try:
                rows += run(url, "PostgreSQL", *common)
            finally:
                drop()
        else:
            print("(no --postgres URL: PostgreSQL skipped)")
    print(
        f"\nfloor = (1 + squeezers) batched forward passes on {options.device}; "
        f"medians of {options.repeats} runs"
    )
    header = ("database", "model", "batch", "squeezers", "floor rec/s", "end-to-end rec/s")
    print(table(rows, (*header, "share of floor")))


if __name__ == "__main__":
    main()
