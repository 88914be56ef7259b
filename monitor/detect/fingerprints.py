"""Compact input fingerprints for stateful detection of query attacks (Blacklight, Li et al.,
USENIX Security 2022): near-identical queries share most of their fingerprint.

Recipe: view the image at most 32×32 (area averages: a 224×224 or 512×512 image costs about as
much as a 32×32 one, and a query's small perturbation averages out), quantize pixels to steps
of 50/255, slide a window of 20 values over the flattened image,
hash every window, keep the ``top`` largest distinct hashes. Where Blacklight hashes each window
with SHA-256, a window of 20 quantized values (each 0–5) is encoded exactly as a 20-digit base-6
number (< 2^52) and mixed with splitmix64: the same "equal windows give equal hashes, different
windows look random", vectorized for a batch, at a fraction of the cost. Only the fingerprint is
stored, never the input.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from monitor.detect.scores import as_float

STEP = 50 / 255
WINDOW = 20
TOP = 50
_LEVELS = int(1 // STEP) + 1  # 6 quantization levels for values in [0, 1]
_POWERS = _LEVELS ** np.arange(WINDOW, dtype=np.int64)
STOP_SHARE = 0.02
VIEW = 32  # the largest side hashed; larger images are area-averaged down to it


def _splitmix64(values: np.ndarray) -> np.ndarray:
    z = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def fingerprints(
    x: torch.Tensor, top: int = TOP, stop: np.ndarray | None = None
) -> list[np.ndarray]:
    """One fingerprint (sorted distinct uint64 hashes, at most ``top``, none of ``stop``) per
    image of N×C×H×W."""
    values, counts = _kept_hashes(x, top, stop)
    return np.split(values, np.cumsum(counts)[:-1])


def fingerprint_bytes(
    x: torch.Tensor, top: int = TOP, stop: np.ndarray | None = None
) -> list[bytes]:
    """``fingerprints(x, top, stop)`` as ``to_bytes`` stores each, without a per-image array."""
    values, counts = _kept_hashes(x, top, stop)
    data = values.astype(">u8").tobytes()
    ends = np.cumsum(counts) * 8
    return [data[end - 8 * n : end] for end, n in zip(ends.tolist(), counts.tolist(), strict=True)]


def _window_hashes(x: torch.Tensor) -> np.ndarray:
    """Every window's hash, per image (N × windows), sorted ascending."""
    flat = np.floor(view(x).reshape(len(x), -1).cpu().numpy() / STEP + 1e-6)
    flat = flat.clip(0, _LEVELS - 1)
    flat = flat.astype(np.int64)
    if flat.shape[1] < WINDOW:
        flat = np.pad(flat, ((0, 0), (0, WINDOW - flat.shape[1])))
    windows = np.lib.stride_tricks.sliding_window_view(flat, WINDOW, axis=1)
    with np.errstate(over="ignore"):
        return np.sort(_splitmix64(windows @ _POWERS), axis=1)


def view(x: torch.Tensor) -> torch.Tensor:
    """The image as hashed: sides above ``VIEW`` area-averaged down to ``VIEW``."""
    h, w = x.shape[-2:]
    if max(h, w) <= VIEW:
        return x
    return F.adaptive_avg_pool2d(x.float(), (min(h, VIEW), min(w, VIEW)))


def _kept_hashes(
    x: torch.Tensor, top: int, stop: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Every image's ``top`` largest distinct hashes not in ``stop``, ascending, concatenated;
    and their counts."""
    hashes = _window_hashes(x)
    last = np.ones(hashes.shape, dtype=bool)  # the last of each run of equal hashes
    last[:, :-1] = hashes[:, :-1] != hashes[:, 1:]
    if stop is not None and len(stop):
        last &= ~np.isin(hashes, stop)
    rank = np.cumsum(last[:, ::-1], axis=1)[:, ::-1]  # 1 = largest distinct hash
    keep = last & (rank <= top)
    return hashes[keep], keep.sum(axis=1)


def to_bytes(fingerprint: np.ndarray) -> bytes:
    return fingerprint.astype(">u8").tobytes()


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=">u8").astype(np.uint64)


def shared(a: np.ndarray, b: np.ndarray) -> int:
    """How many hashes two fingerprints share."""
    return int(np.intersect1d(a, b, assume_unique=True).size)


def stop_hashes(x: torch.Tensor, share: float = STOP_SHARE, max_images: int = 2000) -> np.ndarray:
    """The window hashes found in more than ``share`` of the images (sorted uint64)."""
    x = _sample(x, max_images)
    hashes = np.concatenate([_window_hashes(part) for part in _batches(x)])
    first = np.ones(hashes.shape, dtype=bool)
    first[:, 1:] = hashes[:, 1:] != hashes[:, :-1]
    values, counts = np.unique(hashes[first], return_counts=True)
    return values[counts > share * len(x)]


def _batches(x: torch.Tensor, size: int = 128) -> Iterator[torch.Tensor]:
    """Float batches of images stored as float or uint8 (0–255), converted one at a time."""
    for i in range(0, len(x), size):
        yield as_float(x[i : i + size])


def _sample(x: torch.Tensor, max_images: int, seed: int = 0) -> torch.Tensor:
    if len(x) <= max_images:
        return x
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:max_images]
    return x[pick]


def benign_min_shared(
    x: torch.Tensor, stop: np.ndarray | None = None, max_images: int = 2000
) -> int:
    """The match threshold for a data set, set from benign traffic and the fingerprints the
    ingester stores (``stop`` left out): 1.25× the 99.999th percentile of the hashes shared by
    two different clean inputs (over all pairs), at least 8 and at most 60% of a fingerprint.

    Measured on scikit-learn's digits (all pairs of the test split): unrelated inputs share at
    most 10 of 45 hashes, while a query attack's near-duplicates share 17 to 45.
    """
    import scipy.sparse as sp

    x = _sample(x, max_images)
    prints = [p for part in _batches(x) for p in fingerprints(part, stop=stop)]
    unique, columns = np.unique(np.concatenate(prints), return_inverse=True)
    rows = np.repeat(np.arange(len(prints)), [len(p) for p in prints])
    member = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, columns)), shape=(len(prints), len(unique))
    )
    overlaps = (member @ member.T).toarray()
    pairs = overlaps[np.triu_indices(len(prints), 1)]
    tail = float(np.quantile(pairs, 1 - 1e-5)) if len(pairs) else 0.0
    size = int(np.median([len(p) for p in prints]))
    return int(min(max(8, np.ceil(1.25 * tail)), max(8, int(0.6 * size))))
