"""Detector calibration on four models: what it chooses, how well it detects, what it costs.

    OMP_NUM_THREADS=1 python benchmarks/detectors.py [--models digits-cnn,cnn28,resnet18,small224]
        [--limit N] [--memory 128,512,2000]

Models: the 8×8 demo CNN (scikit-learn digits), a 28×28 CNN (digits28), a CIFAR-style
ResNet-18 on 3×32×32 and a small strided CNN on 3×224×224, both on digits painted over crops
of real photographs (``benchmarks/_colour_data.py``). Each is trained here, registered in a
temporary MLflow store and calibrated with ``robmon calibrate --json`` under
``/usr/bin/time -v``: calibration seconds and peak memory (maximum resident set size) come
from that process alone. Printed per model: the squeezers chosen and the candidates' clean
accuracy, ROC AUC and cost, then per detector the held-out detection per eps, mean ROC AUC,
FPR on clean inputs and in the worst benign group. ``--memory`` calibrates the 224 model on
that many images each (one eps) to show peak memory against dataset size.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._colour_data import write_npz
from benchmarks._timing import table
from monitor import architectures
from monitor.datasets import load_dataset
from monitor.training import accuracy, train_classifier

# name: (architecture, train data, test data, epochs, calibration limit)
MODELS = {
    "digits-cnn": ("digits-cnn", "digits", "digits", 10, None),
    "cnn28": ("cnn28", "digits28", "digits28", 4, None),
    "resnet18": ("resnet18", "photos32-train", "photos32-test", 4, 200),
    "small224": ("small-cnn-rgb", "photos224-train", "photos224-test", 15, 200),
}
PHOTOS = {  # name: (images, side, seed, digit split)
    "photos32-train": (1500, 32, 1, "train"),
    "photos32-test": (600, 32, 2, "test"),
    "photos224-train": (1200, 224, 3, "train"),
    "photos224-test": (2000, 224, 4, "test"),
}


def dataset_spec(name: str, folder: Path) -> str:
    if name in PHOTOS:
        n, size, seed, split = PHOTOS[name]
        return str(write_npz(folder / f"{name}.npz", n, size, seed, split))
    return name


def register(registry, name: str, folder: Path):
    from monitor.registry import DATASET_TAG

    arch, train_name, test_name, epochs, _ = MODELS[name]
    train = load_dataset(
        dataset_spec(train_name, folder), "test" if train_name in PHOTOS else "train"
    )
    test_spec = dataset_spec(test_name, folder)
    test = load_dataset(test_spec)
    torch.manual_seed(0)
    model = architectures.ARCHITECTURES[arch]()
    train_classifier(model, train.x, train.y, epochs=epochs, lr=2e-3)
    model.eval()
    acc = accuracy(model, test.x[:500], test.y[:500])
    ref = registry.register_torch(model, f"bench-{name}", test.x[:2], tags={DATASET_TAG: test_spec})
    return ref, acc


def calibrate(home: Path, ref, *extra: str) -> tuple[dict, float, float]:
    """``robmon calibrate --json`` under /usr/bin/time -v: (result, seconds, peak MB)."""
    env = {**os.environ, "ROBMON_HOME": str(home)}
    for key in ("ROBMON_DB_URL", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "ROBMON_CONFIG"):
        env.pop(key, None)
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "monitor", "calibrate", ref.uri]
    done = subprocess.run([*command, *extra, "--json"], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", done.stderr)[1]
    seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
    return json.loads(done.stdout), seconds, peak_kb / 1024


def describe(name: str, acc: float, result: dict, seconds: float, peak: float) -> None:
    print(
        f"\n== {name}: clean accuracy {acc:.3f}; calibration {seconds:.0f} s, peak {peak:,.0f} MB"
    )
    print(f"squeezers: {', '.join(result['squeezers']) or 'none'} ({result['reason']})")
    print(
        table(
            [
                (
                    c["squeezer"],
                    "-" if c["clean_accuracy"] is None else f"{c['clean_accuracy']:.3f}",
                    "-" if c["roc_auc"] is None else f"{c['roc_auc']:.3f}",
                    f"{c['cost']:.1f}",
                    c["reason"],
                )
                for c in result["candidates"]
            ],
            ("candidate", "clean acc", "ROC AUC", "cost (fwd)", "decision"),
        )
    )
    rows = []
    for d in result["detectors"]:
        aucs = [v for v in d["roc_auc"].values() if v is not None]
        by_eps = ", ".join(
            f"{float(e) * 255:.0f}/255: {r:.2f}" if float(e) < 0.05 else f"{e}: {r:.2f}"
            for e, r in d["by_eps"].items()
            if r is not None
        )
        worst = max(d["fpr_benign"], key=d["fpr_benign"].get)
        rows.append(
            (
                d["detector"],
                by_eps,
                f"{sum(aucs) / len(aucs):.3f}" if aucs else "-",
                f"{d['fpr_clean']:.3f}",
                f"{d['fpr_benign'][worst]:.3f} ({worst})",
            )
        )
    print(table(rows, ("detector", "detection per eps", "mean AUC", "FPR clean", "worst benign")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--limit", type=int, help="calibration images (default per model)")
    parser.add_argument("--memory", default="", help="224 model: calibrate on these many images")
    parser.add_argument("--out", type=Path, help="write every result as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from monitor.config import load_settings
    from monitor.registry import Registry

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / ".robmon"
        registry = Registry(load_settings({"ROBMON_HOME": str(home)}))
        for name in [m for m in args.models.split(",") if m]:
            ref, acc = register(registry, name, Path(tmp))
            limit = args.limit or MODELS[name][4]
            extra = ["--limit", str(limit)] if limit else []
            result, seconds, peak = calibrate(home, ref, *extra)
            describe(name, acc, result, seconds, peak)
            results[name] = {"accuracy": acc, "seconds": seconds, "peak_mb": peak, **result}
        sizes = [int(n) for n in args.memory.split(",") if n]
        if sizes:
            ref, _ = register(registry, "small224", Path(tmp))
            rows = []
            for n in sizes:
                _, seconds, peak = calibrate(home, ref, "--limit", str(n), "--eps", "8/255")
                rows.append((n, f"{seconds:.0f}", f"{peak:,.0f}"))
                results[f"memory-{n}"] = {"seconds": seconds, "peak_mb": peak}
            print("\n224×224 small CNN, one eps (8/255): peak memory against dataset size")
            print(table(rows, ("images", "seconds", "peak MB")))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
