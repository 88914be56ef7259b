"""Feature squeezers (Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in
Deep Neural Networks", NDSS 2018): bit-depth reduction and k×k median smoothing.

Each squeezer maps pixel-space images (N×C×H×W in [0, 1]) to squeezed images of the same shape.
Names are ``bits:N`` and ``median:K``; the paper's recipe is bits:1 + median:2 for grey images
and bits:5 + median:2 for colour images.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_NAME = re.compile(r"^(bits|median):(\d+)$")
CANDIDATES = ("bits:1", "bits:2", "bits:3", "bits:4", "bits:5", "bits:6", "median:2", "median:3")


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Reduce each pixel to ``bits`` bits: round(x·(2^bits − 1)) / (2^bits − 1)."""
    levels = 2**bits - 1
    return torch.round(x * levels) / levels


def median_filter(x: torch.Tensor, k: int) -> torch.Tensor:
    """k×k median per channel, as scipy.ndimage.median_filter(mode="reflect") computes it.

    For an even k the window reaches one pixel further up/left than down/right and the median is
    the upper of the two middle values (scipy's rank k·k // 2), as in the paper's 2×2 filter.
    """
    n, c, h, w = x.shape
    before, after = k // 2, (k - 1) // 2
    padded = _symmetric_pad(x, before, after)
    windows = F.unfold(padded.reshape(n * c, 1, *padded.shape[2:]), kernel_size=k)
    middle = windows.sort(dim=1).values[:, (k * k) // 2, :]
    return middle.reshape(n, c, h, w)


def _symmetric_pad(x: torch.Tensor, before: int, after: int) -> torch.Tensor:
    """Half-sample symmetric padding (scipy's "reflect": the edge pixel is repeated)."""
    if before == after == 0:
        return x
    if max(before, after) == 1:
        return F.pad(x, (before, after, before, after), mode="replicate")
    left = x[..., :, :before].flip(-1)
    right = x[..., :, x.shape[-1] - after :].flip(-1)
    x = torch.cat([left, x, right], dim=-1)
    top = x[..., :before, :].flip(-2)
    bottom = x[..., x.shape[-2] - after :, :].flip(-2)
    return torch.cat([top, x, bottom], dim=-2)


@dataclass(frozen=True)
class Squeezer:
    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)


SQUEEZER_KINDS: dict[str, Callable[[int], Callable[[torch.Tensor], torch.Tensor]]] = {
    "bits": lambda n: lambda x: bit_depth(x, n),
    "median": lambda k: lambda x: median_filter(x, k),
}
_LIMITS = {"bits": (1, 8), "median": (2, 7)}


def parse_squeezer(name: str) -> Squeezer:
    """``bits:N`` (1–8) or ``median:K`` (2–7) to a Squeezer; ValueError otherwise."""
    match = _NAME.match(name.strip())
    if not match:
        raise ValueError(f"a squeezer is bits:N or median:K, not {name!r}")
    kind, value = match[1], int(match[2])
    low, high = _LIMITS[kind]
    if not low <= value <= high:
        raise ValueError(f"{kind}:{value} is out of range ({kind}:{low} to {kind}:{high})")
    return Squeezer(f"{kind}:{value}", SQUEEZER_KINDS[kind](value))


def default_squeezers(channels: int) -> tuple[str, ...]:
    """The paper's recipe: grey images 1-bit + 2×2 median; colour images 5-bit + 2×2 median."""
    return ("bits:1", "median:2") if channels == 1 else ("bits:5", "median:2")
