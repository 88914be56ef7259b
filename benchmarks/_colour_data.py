"""Colour test data without downloads: digits in colour over crops of real photographs.

scikit-learn ships two photographs (``load_sample_images``: a temple in China and a flower,
427×640 RGB). Each image here is a random crop of one of them, resized to the requested size,
with one of scikit-learn's handwritten digits (28×28, upscaled) painted over it in a colour
that stands out from the crop. The label is the digit. Natural textures, JPEG history and
colour statistics come from the photographs; the class signal from the digit. Saved as
``.npz`` with uint8 ``x`` (N×3×H×W), so robmon reads it as a dataset path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from monitor.datasets import load_dataset


def digit_photos(
    n: int, size: int, seed: int = 0, split: str = "all"
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 N×3×size×size) and their digit labels."""
    from sklearn.datasets import load_sample_images

    photos = [
        torch.from_numpy(p.copy()).permute(2, 0, 1).float() / 255
        for p in load_sample_images().images
    ]
    digits = load_dataset("digits28", split)
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randint(len(digits), (n,), generator=gen)
    x = np.empty((n, 3, size, size), dtype=np.uint8)
    for start in range(0, n, 64):
        idx = pick[start : start + 64]
        crops = []
        for _ in idx:
            photo = photos[int(torch.randint(2, (1,), generator=gen))]
            side = int(torch.randint(80, 400, (1,), generator=gen))
            top = int(torch.randint(photo.shape[1] - side + 1, (1,), generator=gen))
            left = int(torch.randint(photo.shape[2] - side + 1, (1,), generator=gen))
            crop = photo[:, top : top + side, left : left + side][None]
            crops.append(F.interpolate(crop, (size, size), mode="bilinear", antialias=True))
        background = torch.cat(crops)
        mask = F.interpolate(digits.x[idx], (size, size), mode="bilinear", align_corners=False)
        mask = ((mask - 0.25) * 3).clamp(0, 1)  # bold strokes, not the 8×8 digits' soft blobs
        # a colour that stands out from the crop: dark on bright backgrounds, bright on dark
        bright = background.mean(dim=(1, 2, 3), keepdim=True) < 0.5
        shade = 0.3 * torch.rand(len(idx), 3, 1, 1, generator=gen)
        colour = torch.where(bright, 1 - shade, shade)
        image = background * (1 - mask) + colour * mask
        x[start : start + len(idx)] = (image.clamp(0, 1) * 255).round().byte().numpy()
    return x, digits.y[pick].numpy()


def write_npz(path: Path, n: int, size: int, seed: int, split: str) -> Path:
    """A dataset file of ``digit_photos`` (written once; reused when it exists)."""
    if not path.exists():
        x, y = digit_photos(n, size, seed, split)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=x, y=y, classes=np.array([str(i) for i in range(10)]))
    return path
