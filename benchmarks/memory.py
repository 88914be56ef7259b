"""A 224×224 ResNet-18 audit of 256 images on a 4 GB budget: the batch size auto picks, and what
the audit then costs.

    OMP_NUM_THREADS=1 python benchmarks/memory.py [--limit 4GB] [--images 256] [--steps 2]
                                                  [--eps 1] [--also-fixed 256]

Each run is a child process whose address space is capped at --limit (RLIMIT_AS, set before
torch is imported), audited with ``--memory-limit`` the same: ``measure()`` on
``resnet18_imagenet`` (random weights; labels are its own predictions, so every image is
attacked) over --images random 3×224×224 images, one FGSM cell and one PGD cell (--steps steps)
at L∞ --eps/255 (1/255 by default: some images resist, so PGD runs every step on them), plus
the credibility probes (input gradients, a large-eps PGD). Printed per run: the batch record
(requested, used, per-sample MB, budget, halvings, why), seconds and passes per cell, peak RSS
(getrusage) and peak virtual size (VmPeak, what RLIMIT_AS caps), total seconds. ``--also-fixed
N`` runs the same audit at a fixed batch of N under the same cap (halved on out-of-memory) and
says whether its numbers equal the auto run's.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MB = 2**20


def child(args: argparse.Namespace) -> None:
    """One audit under the address-space cap; prints a JSON summary."""
    import torch

    from monitor.architectures import resnet18_imagenet
    from monitor.audit.config import AuditConfig
    from monitor.audit.measure import Attackers, measure
    from monitor.audit.memory import BatchSize
    from monitor.classifiers import TorchClassifier

    torch.manual_seed(0)
    model = resnet18_imagenet(classes=10).eval()
    x = torch.rand(args.images, 3, 224, 224)
    with torch.no_grad():
        y = torch.cat([model(x[i : i + 16]).argmax(1) for i in range(0, len(x), 16)])
    config = AuditConfig(
        dataset="random-224", attacks=("fgsm", "pgd"), eps=(args.eps / 255,), steps=args.steps
    )
    started = time.perf_counter()
    m = measure(
        Attackers(TorchClassifier("resnet18-224", model)),
        x,
        y,
        config,
        batch_size=BatchSize.of(args.batch_size, args.limit),
    )
    cells = [m.probes.large_eps, *m.cells]
    status = Path("/proc/self/status").read_text()
    print(
        json.dumps(
            {
                "batch": m.batch,
                "seconds": time.perf_counter() - started,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "peak_virtual_mb": int(re.search(r"VmPeak:\s+(\d+)", status)[1]) / 1024,
                "clean": m.clean_accuracy,
                "cells": [
                    {
                        "cell": f"{c.attack} eps {c.eps:g}" + (" (probe)" if i == 0 else ""),
                        "robust_accuracy": c.robust_accuracy,
                        "mean_perturbation": c.mean_perturbation,
                        "passes": c.passes,
                        "seconds": round(c.seconds, 1),
                    }
                    for i, c in enumerate(cells)
                ],
            }
        )
    )


def run_child(args: argparse.Namespace, batch_size: str) -> dict:
    """The audit in a child process capped at ``args.limit`` of address space."""
    from monitor.audit.memory import parse_memory_size

    cap = parse_memory_size(args.limit)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, resource.RLIM_INFINITY))

    command = [sys.executable, __file__, "--child", "--batch-size", batch_size]
    command += ["--limit", args.limit, "--images", str(args.images), "--steps", str(args.steps)]
    command += ["--eps", str(args.eps)]
    done = subprocess.run(command, capture_output=True, text=True, preexec_fn=limit)
    if done.returncode != 0:
        raise SystemExit(f"the {batch_size} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def show(name: str, result: dict) -> None:
    batch = result["batch"]
    print(f"\n{name}: batch {batch['used']} (requested {batch['requested']}), ", end="")
    print(f"per sample {batch['per_sample_mb']} MB, budget {batch['budget_mb']} MB, ", end="")
    print(f"halvings {batch['halvings']}")
    print(f"  why: {batch['why']}")
    print(
        f"  peak RSS {result['peak_rss_mb']:.0f} MB, peak virtual {result['peak_virtual_mb']:.0f}"
        f" MB, {result['seconds']:.0f} s, clean accuracy {result['clean']:.3f}"
    )
    for c in result["cells"]:
        print(
            f"  {c['cell']:<22} robust {c['robust_accuracy']:.3f}  passes {c['passes']:>5}  "
            f"{c['seconds']:>6} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", default="4GB", help="address-space cap and --memory-limit")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=2, help="PGD steps")
    parser.add_argument("--eps", type=float, default=1.0, help="L∞ radius in 1/255")
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--also-fixed", default=None, help="also run at this fixed batch size")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    print(
        f"ResNet-18 3×224×224 (random weights), {args.images} images, FGSM + PGD-{args.steps} "
        f"at {args.eps:g}/255 and the probes; address space capped at {args.limit}"
    )
    auto = run_child(args, args.batch_size)
    show(f"--batch-size {args.batch_size} --memory-limit {args.limit}", auto)
    if args.also_fixed:
        fixed = run_child(args, args.also_fixed)
        show(f"--batch-size {args.also_fixed} under the same cap", fixed)
        same = [(c["robust_accuracy"], c["mean_perturbation"], c["passes"]) for c in auto["cells"]]
        other = [
            (c["robust_accuracy"], c["mean_perturbation"], c["passes"]) for c in fixed["cells"]
        ]
        print(f"\nsame numbers at both batch sizes: {same == other}")


if __name__ == "__main__":
    main()
