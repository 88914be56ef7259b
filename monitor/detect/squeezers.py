"""Feature squeezers (Xu, Evans & Qi, "Feature Squeezing: Detecting Adversarial Examples in
Deep Neural Networks", NDSS 2018): bit-depth reduction, k×k median smoothing and non-local
means.

Each squeezer maps pixel-space images (N×C×H×W in [0, 1]) to squeezed images of the same shape.
Names are ``bits:N``, ``median:K`` and ``nlm:S-P-H`` (search window S, patch P, strength H on
the 0–255 scale, as the paper's 11-3-4 and 13-3-2); the paper's recipe is bits:1 + median:2 for
grey images and bits:5 + median:2 + non-local means for colour images. Calibration chooses among
the candidates of the input kind (``candidates_for``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_NAME = re.compile(r"^(bits|median):(\d+)$")
_NLM = re.compile(r"^nlm:(\d+)-(\d+)-(\d+)$")
CANDIDATES = ("bits:1", "bits:2", "bits:3", "bits:4", "bits:5", "bits:6", "median:2", "median:3")
COLOUR_CANDIDATES = (
    "bits:4",
    "bits:5",
    "bits:6",
    "median:2",
    "median:3",
    "nlm:11-3-4",
    "nlm:13-3-2",
)


def candidates_for(channels: int) -> tuple[str, ...]:
    """The squeezers calibration tries: grey images bits 1–6 and medians; colour images the
    paper's colour squeezers (bit depth 4–6, medians, non-local means)."""
    return CANDIDATES if channels == 1 else COLOUR_CANDIDATES


def bit_depth(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Reduce each pixel to ``bits`` bits: round(x·(2^bits − 1)) / (2^bits − 1)."""
    levels = 2**bits - 1
    return (x * levels).round_().div_(levels)


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


# values one row of shifted copies may take, else one offset at a time: rows are up to 2.3x
# faster on a few small images (one 32x32 RGB image: 12.5 -> 5.4 ms), slower once memory-bound
ROW_VALUES = 2**18


def non_local_means(x: torch.Tensor, search: int, patch: int, strength: float) -> torch.Tensor:
    """Non-local means (Buades et al. 2005): each pixel becomes the average of the pixels in its
    ``search``×``search`` window, weighted by exp(−d²/h²) where d² is the mean squared
    difference of the ``patch``×``patch`` neighbourhoods (over channels) and h = strength/255.
    The offsets are visited a row at a time (``search`` shifted copies of the batch), or one
    at a time when a row would take more than ``ROW_VALUES`` values: memory stays bounded."""
    n, _, h, w = x.shape
    r, p = search // 2, patch // 2
    padded = F.pad(x, (r,) * 4, mode="reflect" if r < min(h, w) else "replicate")
    scale = (strength / 255.0) ** 2
    total = torch.zeros_like(x)
    weights = torch.zeros(n, 1, h, w, dtype=x.dtype, device=x.device)
    by_row = x.numel() * search <= ROW_VALUES
    for dy in range(2 * r + 1):
        band = padded[..., dy : dy + h, :]  # N×C×H×(W+2r)
        shifts = (
            [band.unfold(-1, w, 1).permute(0, 3, 1, 2, 4)]  # N×search×C×H×W
            if by_row
            else [band[..., dx : dx + w].unsqueeze(1) for dx in range(2 * r + 1)]
        )
        for shifted in shifts:
            d2 = (x.unsqueeze(1) - shifted).square().mean(dim=2)  # N×k×H×W
            d2 = F.avg_pool2d(d2, patch, stride=1, padding=p, count_include_pad=False)
            weight = torch.exp(-d2 / scale)
            total += (weight.unsqueeze(2) * shifted).sum(dim=1)
            weights += weight.sum(dim=1, keepdim=True)
    return total / weights


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
    """``bits:N`` (1–8), ``median:K`` (2–7) or ``nlm:S-P-H`` (odd S 3–21, odd P 1–7 below S,
    H 1–64) to a Squeezer; ValueError otherwise."""
    nlm = _NLM.match(name.strip())
    if nlm:
        search, patch, strength = (int(v) for v in nlm.groups())
        if not (search % 2 and patch % 2 and 3 <= search <= 21 and patch < search <= 21):
            raise ValueError(f"{name}: search and patch must be odd, 3 ≤ patch < search ≤ 21")
        if not 1 <= strength <= 64 or patch > 7:
            raise ValueError(f"{name}: strength must be 1–64 and patch at most 7")
        return Squeezer(
            f"nlm:{search}-{patch}-{strength}",
            lambda x: non_local_means(x, search, patch, strength),
        )
    match = _NAME.match(name.strip())
    if not match:
        raise ValueError(f"a squeezer is bits:N, median:K or nlm:S-P-H, not {name!r}")
    kind, value = match[1], int(match[2])
    low, high = _LIMITS[kind]
    if not low <= value <= high:
        raise ValueError(f"{kind}:{value} is out of range ({kind}:{low} to {kind}:{high})")
    return Squeezer(f"{kind}:{value}", SQUEEZER_KINDS[kind](value))


def default_squeezers(channels: int) -> tuple[str, ...]:
    """The paper's recipe: grey images 1-bit + 2×2 median; colour images 5-bit + 2×2 median."""
    return ("bits:1", "median:2") if channels == 1 else ("bits:5", "median:2")
