"""Benign corruptions: what cameras and transport do to natural images. Calibration counts
each as a benign group whose false-positive rate every threshold must hold."""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F


def _gaussian_blur(x: torch.Tensor, sigma: float = 0.6) -> torch.Tensor:
    radius = 1
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel1d = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel1d /= kernel1d.sum()
    kernel = (kernel1d[:, None] * kernel1d[None, :]).expand(x.shape[1], 1, -1, -1)
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel.contiguous(), groups=x.shape[1]).clamp(0, 1)


def _jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    from PIL import Image

    out = []
    for image in x:
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
        decoded = decoded[..., None] if decoded.ndim == 2 else decoded
        out.append(torch.from_numpy(decoded).permute(2, 0, 1))
    return torch.stack(out)


def benign_corruptions(x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """What cameras and transport do to natural images: light noise, blur, JPEG, a brightness
    shift, a palette of 8 levels, and a resize down and back up. None is adversarial; each is
    one benign group of the calibration, whose rates every threshold must hold. (Heavier noise
    and poorer JPEG as groups cost the detector the strong PGD inputs a stealthy attacker mixes
    into clean traffic: measured on 28×28 digits, the alert rules handle such cameras instead.)"""
    gen = torch.Generator().manual_seed(seed)
    h, w = x.shape[-2:]
    small = (max(4, round(0.6 * h)), max(4, round(0.6 * w)))
    return {
        "noise": (x + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1),
        "blur": _gaussian_blur(x),
        "jpeg": _jpeg(x),
        "brightness": (x + 0.1).clamp(0, 1),
        "palette": torch.round(x * 7) / 7,
        "resized": F.interpolate(
            F.interpolate(x, small, mode="bilinear", antialias=True), (h, w), mode="bilinear"
        ).clamp(0, 1),
    }
