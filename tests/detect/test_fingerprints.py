"""Fingerprints of large images hash a 32×32 area-averaged view: cheap, and near-duplicate
queries still share most hashes while unrelated images do not."""

import numpy as np
import torch
import torch.nn.functional as F

from monitor.datasets import load_dataset
from monitor.detect.fingerprints import (
    VIEW,
    benign_min_shared,
    fingerprints,
    shared,
    stop_hashes,
    view,
)


def _photos(n: int, size: int) -> torch.Tensor:
    """Natural-looking RGB images: digits in colour over smooth gradients, upscaled."""
    digits = load_dataset("digits28").x[:n]
    gen = torch.Generator().manual_seed(1)
    colour = torch.rand(n, 3, 1, 1, generator=gen)
    ramp = torch.linspace(0, 1, 28).view(1, 1, 1, 28) * torch.rand(n, 3, 1, 1, generator=gen)
    images = (0.5 * ramp + colour * digits).clamp(0, 1)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def test_large_images_hash_their_area_averaged_view() -> None:
    x = _photos(4, 224)
    assert view(x).shape == (4, 3, VIEW, VIEW)
    small = torch.rand(2, 1, 28, 28)
    assert view(small) is small  # up to 32×32 hashed as is
    expected = fingerprints(F.adaptive_avg_pool2d(x, VIEW))
    assert all(np.array_equal(a, b) for a, b in zip(fingerprints(x), expected, strict=True))


def test_near_duplicates_match_and_unrelated_images_do_not_at_224() -> None:
    """Near duplicates (±4/255 on every pixel) reach the benign match threshold, unrelated
    images stay under it (figures per size: benchmarks/fingerprints.py)."""
    x = _photos(120, 224)
    stop = stop_hashes(x)
    threshold = benign_min_shared(x, stop)
    gen = torch.Generator().manual_seed(2)
    prints = fingerprints(x[:20], stop=stop)
    step = (4 / 255) * torch.sign(torch.randn(20, 3, 224, 224, generator=gen))
    noisy = fingerprints((x[:20] + step).clamp(0, 1), stop=stop)
    near = [shared(a, b) for a, b in zip(prints, noisy, strict=True)]
    assert min(near) >= threshold, (near, threshold)
    others = fingerprints(x[20:40], stop=stop)
    unrelated = [shared(a, b) for a in prints for b in others]
    assert max(unrelated) < threshold
