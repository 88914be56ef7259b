"""Fingerprint cost and discrimination by image size.

    OMP_NUM_THREADS=1 python benchmarks/fingerprints.py

Per size (28×28 grey digits; 32×32, 224×224 and 512×512 colour photos with digits,
``benchmarks/_colour_data.py``): milliseconds per image to fingerprint a batch of 64 (images
above 32×32 are hashed as a 32×32 area-averaged view), the benign match threshold calibration
sets (``benign_min_shared``, stop hashes left out), the hashes shared by near duplicates (the
image and a copy with ±eps on every pixel, random signs: the whole budget of an L∞ query
attack at once) and the most shared by two unrelated images.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._colour_data import digit_photos
from benchmarks._timing import table
from monitor.datasets import load_dataset
from monitor.detect.fingerprints import (
    benign_min_shared,
    fingerprint_bytes,
    fingerprints,
    shared,
    stop_hashes,
)


def images(size: int, n: int = 200) -> torch.Tensor:
    if size == 28:
        return load_dataset("digits28").x[:n]
    return torch.from_numpy(digit_photos(n, size, seed=size, split="test")[0]).float() / 255


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for size in (28, 32, 224, 512):
        x = images(size)
        stop = stop_hashes(x)
        threshold = benign_min_shared(x, stop)
        started = time.perf_counter()
        fingerprint_bytes(x[:64], stop=stop)
        ms = (time.perf_counter() - started) / 64 * 1000
        prints = fingerprints(x[:40], stop=stop)
        gen = torch.Generator().manual_seed(0)
        near = {}
        for eps in (1, 4, 8):
            step = (eps / 255) * torch.sign(torch.randn(x[:40].shape, generator=gen))
            noisy = fingerprints((x[:40] + step).clamp(0, 1), stop=stop)
            counts = np.array([shared(a, b) for a, b in zip(prints, noisy, strict=True)])
            matched = np.mean(counts >= threshold)
            near[eps] = f"{np.median(counts):.0f} (min {counts.min()}, {matched:.0%} match)"
        others = fingerprints(x[40:120], stop=stop)
        unrelated = max(shared(a, b) for a in prints for b in others)
        rows.append(
            (f"{size}×{size}", f"{ms:.2f}", threshold, near[1], near[4], near[8], unrelated)
        )
    print(
        table(
            rows,
            (
                "size",
                "ms/image",
                "threshold",
                "near ±1/255",
                "near ±4/255",
                "near ±8/255",
                "unrelated max",
            ),
        )
    )


if __name__ == "__main__":
    main()
