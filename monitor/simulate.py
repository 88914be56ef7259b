"""Simulated production traffic as production log records, for the demo, tests and benchmarks.

The streams are built to test the per-source alert rules, not to suit them. Benign sources draw
their pictures with replacement from a shared pool of popular images (the same picture arrives
from many sources, and twice from one), through a per-source camera (``benign-clean``,
``benign-noise``, ``benign-blur``, ``benign-jpeg``), and every send is brightness/contrast-shifted,
sometimes resized down and back up, often re-encoded (JPEG at a random quality, or a palette
quantisation). Volumes run from 5 to 200 inputs (at ``per_source`` 45), at steady, bursty or
periodic paces. All pixels are sent on the 8-bit grid, as a decoded PNG would be.

Attacker kinds are ``ATTACK-PACE`` or a bare ``ATTACK`` (then at its usual pace):

- ``fgsm``, ``pgd``: white-box FGSM / PGD on the target at ``eps`` (usually ``burst``).
- ``transfer``: PGD crafted on the surrogate (20 steps, 1.5·eps), sent to the target.
- ``mixed-10``, ``mixed-20``: popular pool images sent like a benign source, 10% / 20% of them
  replaced by strong PGD (20 steps, 1.5·eps, no early stop) (usually ``steady``).
- ``query-simba``: SimBA (Guo et al. 2019) near-duplicate queries, step 2·eps (at most 0.3).
- ``query-square``: the L∞ Square attack (Andriushchenko et al. 2020), blocks of ±2·eps (≤ 0.3).
- ``query-distributed``: SimBA queries spread at random over ten addresses.

Paces: ``burst`` (about 1.5 s apart), ``slow40s`` and ``slow5m`` (one input every ~40 s / ~5 min,
±30%), ``steady`` (at random over the whole stream). Attackers send ``per_source`` inputs; mixers
and query attackers twice that.

Addresses: benign ``10.0.x.y``; attackers ``10.66.0.n``, n the kind's place in the list (from 1);
distributed attackers ``10.77.m.1`` to ``10.77.m.10`` (m from 0).

Profiles: ``fast`` (the default: 30 benign sources and 6 attackers, about 2,000 records built in
seconds) and ``full`` (40 benign, every attack at burst, slow40s and slow5m: several hours).
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from monitor.attacks import fgsm, pgd
from monitor.attacks.core import model_device
from monitor.datasets import Dataset
from monitor.query_attacks import simba_queries, square_queries

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]
Rng = np.random.Generator

PACES = ("burst", "slow40s", "slow5m", "steady")
_MEAN_GAP = {"burst": 1.5, "slow40s": 40.0, "slow5m": 300.0}  # seconds between inputs
BENIGN_PACES = ("steady", "bursty", "periodic")
BENIGN_VOLUME = (1 / 9, 40 / 9)  # inputs per benign source, times per_source: 5 to 200 at 45
POPULARITY = 0.8  # Zipf exponent of the popular pool: the top picture is ~8% of benign sends


@dataclass
class SimSource:
    name: str
    kind: str  # benign-clean, benign-noise, ..., or an attacker kind such as fgsm-burst
    attacker: bool
    images: list[torch.Tensor] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)  # several for a distributed attacker
    pace: str = "steady"
    seconds: list[float] = field(default_factory=list)  # send time of each image, from start
    sent_from: list[str] = field(default_factory=list)  # address of each image
    origins: list[int] = field(default_factory=list)  # dataset index each image was made from
    labels: list[int] = field(default_factory=list)  # true class of each image


@dataclass
class Traffic:
    sources: list[SimSource]
    records: list[dict]  # sorted by ts
    start: datetime | None = None
    end: datetime | None = None

    def lines(self) -> list[str]:
        return [json.dumps(r) for r in self.records]

    def attacker_addresses(self) -> dict[str, str]:
        """address -> attacker kind."""
        return {a: s.kind for s in self.sources if s.attacker for a in s.addresses}

    def benign_addresses(self) -> set[str]:
        return {a for s in self.sources if not s.attacker for a in s.addresses}


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """A JPEG round trip of one C×H×W image at ``quality``."""
    from PIL import Image

    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(
        buffer, format="JPEG", quality=quality
    )
    decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
    decoded = decoded[..., None] if decoded.ndim == 2 else decoded
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1)


def _jpeg_all(x: torch.Tensor, quality: int) -> torch.Tensor:
    return torch.stack([_jpeg(image, quality) for image in x])


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of N×C×H×W images, per channel."""
    radius = max(1, round(2 * sigma))
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(grid**2) / (2 * sigma**2))
    k = (k[:, None] * k[None, :] / k.sum() ** 2).expand(x.shape[1], 1, -1, -1).contiguous()
    return F.conv2d(F.pad(x, (radius,) * 4, mode="replicate"), k, groups=x.shape[1]).clamp(0, 1)


def _noise(x: torch.Tensor, rng: Rng) -> torch.Tensor:
    sigma = rng.uniform(0.01, 0.05)
    return (x + sigma * torch.from_numpy(rng.standard_normal(x.shape)).to(x.dtype)).clamp(0, 1)


CAMERAS: dict[str, Callable[[torch.Tensor, Rng], torch.Tensor]] = {
    "clean": lambda x, rng: x,
    "noise": _noise,
    "blur": lambda x, rng: _blur(x, rng.uniform(0.4, 0.8)),
    "jpeg": lambda x, rng: _jpeg_all(x, int(rng.integers(40, 86))),
}


def _as_sent(x: torch.Tensor, rng: Rng) -> torch.Tensor:
    """Each picture (N×C×H×W) as a user sends it once: a small brightness/contrast shift,
    sometimes resized down and back up, often re-encoded (JPEG or a palette quantisation)."""
    shape = (len(x), 1, 1, 1)
    contrast = torch.from_numpy(rng.uniform(0.9, 1.1, shape)).to(x.dtype)
    shift = torch.from_numpy(rng.uniform(-0.05, 0.05, shape)).to(x.dtype)
    edited = ((x - 0.5) * contrast + 0.5 + shift).clamp(0, 1)
    h, w = x.shape[-2:]
    sent = []
    for image in edited:
        if rng.random() < 0.3:
            scale = rng.uniform(0.5, 0.85)
            size = (max(4, round(h * scale)), max(4, round(w * scale)))
            small = F.interpolate(image[None], size, mode="bilinear", antialias=True)
            image = F.interpolate(small, (h, w), mode="bilinear")[0]
        roll = rng.random()
        if roll < 0.35:
            image = _jpeg(image.clamp(0, 1), int(rng.integers(30, 96)))
        elif roll < 0.5:
            levels = int(rng.choice([8, 16, 32])) - 1
            image = (image * levels).round() / levels
        sent.append(image.clamp(0, 1))
    return torch.stack(sent)


@dataclass
class _World:
    """What every source draws on: the data, the models, eps and the popular pool."""

    data: Dataset
    target: nn.Module
    surrogate: nn.Module
    eps: float
    pool: np.ndarray  # dataset indices of the popular pictures
    weights: np.ndarray  # their popularity, summing to 1

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = self.target(batch.to(model_device(self.target)))
        return torch.softmax(logits, dim=1).cpu()

    def seeds(self, n: int, rng: Rng) -> torch.Tensor:
        """Indices of distinct dataset images an attacker starts from (popular ones included)."""
        return torch.from_numpy(rng.choice(len(self.data), size=n, replace=False))

    def popular(self, n: int, rng: Rng) -> tuple[torch.Tensor, torch.Tensor, str]:
        """``n`` pictures drawn with replacement from the pool, through one random camera:
        (images as sent, their dataset indices, the camera)."""
        idx = torch.from_numpy(self.pool[rng.choice(len(self.pool), size=n, p=self.weights)])
        camera = str(rng.choice(list(CAMERAS), p=[0.4, 0.2, 0.2, 0.2]))
        return _as_sent(CAMERAS[camera](self.data.x[idx], rng), rng), idx, camera


# -- attackers ---------------------------------------------------------------------------------

Build = Callable[[_World, int, Rng], tuple[torch.Tensor, torch.Tensor]]  # images, origins
Craft = Callable[[_World, torch.Tensor, torch.Tensor, Rng], torch.Tensor]


def _seed(rng: Rng) -> int:
    return int(rng.integers(2**31))


def _strong(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, w: _World, rng: Rng
) -> torch.Tensor:
    """PGD pushed all the way (20 steps at 1.5·eps, no early stop): confidently wrong."""
    return pgd(model, x, y, 1.5 * w.eps, steps=20, early_stop=False, seed=_seed(rng))


def _crafted(craft: Craft) -> Build:
    """An attacker that perturbs distinct dataset images, one input each."""

    def build(w: _World, n: int, rng: Rng) -> tuple[torch.Tensor, torch.Tensor]:
        idx = w.seeds(n, rng)
        return craft(w, w.data.x[idx], w.data.y[idx], rng), idx

    return build


def _mixed(share: float) -> Build:
    """Popular pictures sent like a benign source, ``share`` of them replaced by strong PGD."""

    def build(w: _World, n: int, rng: Rng) -> tuple[torch.Tensor, torch.Tensor]:
        images, idx, _ = w.popular(n, rng)
        hit = torch.from_numpy(rng.choice(n, size=max(1, round(share * n)), replace=False))
        images[hit] = _strong(w.target, images[hit], w.data.y[idx[hit]], w, rng)
        return images, idx

    return build


def _query(search: Callable[..., list[torch.Tensor]]) -> Build:
    """Every query of a black-box search (step or eps 2·eps, at most 0.3), image after image,
    ``n`` in all."""

    def build(w: _World, n: int, rng: Rng) -> tuple[torch.Tensor, torch.Tensor]:
        queries: list[torch.Tensor] = []
        origins: list[int] = []
        step = min(2 * w.eps, 0.3)
        while len(queries) < n:
            j = int(w.seeds(1, rng)[0])
            budget = min(100, n - len(queries))
            found = search(w.probabilities, w.data.x[j], int(w.data.y[j]), step, budget, _seed(rng))
            queries += found
            origins += [j] * len(found)
        return torch.stack(queries), torch.tensor(origins)

    return build


@dataclass(frozen=True)
class Attack:
    build: Build
    inputs: int  # multiple of per_source
    pace: str  # when the kind names none
    addresses: int = 1


ATTACKS: dict[str, Attack] = {
    "fgsm": Attack(_crafted(lambda w, x, y, rng: fgsm(w.target, x, y, w.eps)), 1, "burst"),
    "pgd": Attack(
        _crafted(lambda w, x, y, rng: pgd(w.target, x, y, w.eps, seed=_seed(rng))), 1, "burst"
    ),
    "transfer": Attack(
        _crafted(lambda w, x, y, rng: _strong(w.surrogate, x, y, w, rng)), 1, "burst"
    ),
    "mixed-10": Attack(_mixed(0.1), 2, "steady"),
    "mixed-20": Attack(_mixed(0.2), 2, "steady"),
    "query-simba": Attack(_query(simba_queries), 2, "burst"),
    "query-square": Attack(_query(square_queries), 2, "burst"),
    "query-distributed": Attack(_query(simba_queries), 2, "burst", addresses=10),
}
FAST_KINDS = (
    "fgsm-burst", "pgd-slow40s", "transfer-burst", "mixed-20", "query-square", "query-distributed",
)  # fmt: skip
FULL_KINDS = tuple(f"{a}-{p}" for a in ATTACKS for p in ("burst", "slow40s", "slow5m"))
PROFILES: dict[str, tuple[int, tuple[str, ...]]] = {
    "fast": (30, FAST_KINDS),
    "full": (40, FULL_KINDS),
}


def parse_kind(kind: str) -> tuple[str, str]:
    """``(attack, pace)`` of an attacker kind such as ``pgd-slow40s`` or ``mixed-10``."""
    attack, _, pace = kind.rpartition("-")
    if attack in ATTACKS and pace in PACES:
        return attack, pace
    if kind in ATTACKS:
        return kind, ATTACKS[kind].pace
    raise ValueError(
        f"unknown attacker kind {kind!r}: use one of {', '.join(ATTACKS)}, "
        f"optionally followed by -{' / -'.join(PACES)}"
    )


# -- time ----------------------------------------------------------------------------------------


def _attack_offsets(pace: str, n: int, rng: Rng) -> np.ndarray:
    """Send times in seconds from the attacker's first input (paces other than steady)."""
    mean = _MEAN_GAP[pace]
    gaps = rng.exponential(mean, n) if pace == "burst" else mean * rng.uniform(0.7, 1.3, n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


def _benign_offsets(pace: str, n: int, span: float, rng: Rng) -> np.ndarray:
    """Send times of a benign source over ``span`` seconds: steady, a few bursty sessions,
    or an automated client on a fixed period."""
    if pace == "steady":
        times = rng.uniform(0, span, n)
    elif pace == "periodic":
        period = min(rng.uniform(20, 120), span / n)
        begin = rng.uniform(0, span - period * n + 1e-9)
        times = begin + period * np.arange(n) + rng.normal(0, 0.05 * period, n)
    else:  # a few sessions, inputs a few seconds apart
        sessions = int(rng.integers(1, 6))
        bursts = [
            np.cumsum(rng.exponential(3.0, c))
            for c in rng.multinomial(n, [1 / sessions] * sessions)
        ]
        times = np.concatenate([b + rng.uniform(0, max(span - b[-1:].sum(), 0)) for b in bursts])
    return np.sort(np.clip(times, 0, span))


# -- the stream ----------------------------------------------------------------------------------


def simulate(
    data: Dataset,
    target: nn.Module,
    surrogate: nn.Module,
    *,
    model: str = "digits-cnn",
    benign: int | None = None,
    per_source: int = 45,
    eps: float | None = None,
    start: datetime | None = None,
    minutes: float = 30.0,
    seed: int = 0,
    profile: str = "fast",
    attackers: Sequence[str] | None = None,
    pool: int = 200,
) -> Traffic:
    """Benign sources and attackers (see the module docstring) as production records.

    ``benign`` and ``attackers`` (kinds) default to the ``profile``'s; ``eps`` to 0.1 on images of
    up to 16 pixels a side, else 0.2. Benign traffic covers ``minutes`` of record time, or longer
    when a slow attacker needs it; with ``start`` None the stream ends about an hour before now,
    starting on a whole minute. Deterministic for a given ``seed`` and ``start``.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    default_benign, default_kinds = PROFILES[profile]
    kinds = tuple(default_kinds if attackers is None else attackers)
    benign = default_benign if benign is None else benign
    plans = [parse_kind(k) for k in kinds]
    eps = eps if eps is not None else (0.1 if max(data.x.shape[-2:]) <= 16 else 0.2)
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, min(pool, len(data)) + 1, dtype=float) ** -POPULARITY
    chosen = rng.choice(len(data), size=len(ranks), replace=False)
    world = _World(data, target, surrogate, eps, chosen, ranks / ranks.sum())
    attacking = _attackers(world, kinds, plans, per_source, rng)
    span = _schedule(attacking, minutes * 60.0, rng)
    sources = _benign(world, benign, per_source, span, rng) + attacking
    if start is None:
        start = datetime.now(UTC) - timedelta(seconds=span, hours=1)
        start = start.replace(second=0, microsecond=0)
    start = start.replace(tzinfo=UTC) if start.tzinfo is None else start.astimezone(UTC)
    return Traffic(
        sources, _records(sources, model, start, seed), start, start + timedelta(seconds=span)
    )


def _attackers(
    w: _World, kinds: Sequence[str], plans: list[tuple[str, str]], per_source: int, rng: Rng
) -> list[SimSource]:
    """One source per kind, with its images and addresses (not yet placed in time)."""
    sources, networks = [], 0
    for number, (kind, (attack, pace)) in enumerate(zip(kinds, plans, strict=True), start=1):
        spec = ATTACKS[attack]
        images, origins = spec.build(w, spec.inputs * per_source, rng)
        name, addresses = f"10.66.0.{number}", [f"10.66.0.{number}"]
        if spec.addresses > 1:
            name = f"10.77.{networks}.x"
            addresses = [f"10.77.{networks}.{k}" for k in range(1, spec.addresses + 1)]
            networks += 1
        source = SimSource(name, kind, True, list(images.clamp(0, 1)), addresses, pace=pace)
        source.origins, source.labels = origins.tolist(), w.data.y[origins].tolist()
        source.sent_from = [addresses[i] for i in rng.integers(0, len(addresses), len(images))]
        sources.append(source)
    return sources


def _schedule(sources: list[SimSource], span: float, rng: Rng) -> float:
    """Send times of the attackers; the span (seconds) grows to hold the slowest of them."""
    for source in sources:
        if source.pace != "steady":
            source.seconds = _attack_offsets(source.pace, len(source.images), rng).tolist()
            span = max(span, source.seconds[-1] + 60.0)
    for source in sources:
        if source.pace == "steady":
            source.seconds = np.sort(rng.uniform(0, span, len(source.images))).tolist()
        else:
            shift = rng.uniform(0, span - source.seconds[-1])
            source.seconds = [s + shift for s in source.seconds]
    return span


def _benign(w: _World, count: int, per_source: int, span: float, rng: Rng) -> list[SimSource]:
    """``count`` benign sources; volumes are stratified log-uniform over ``BENIGN_VOLUME``, so
    that both the quietest and the busiest senders appear."""
    low, high = (max(2, round(per_source * share)) for share in BENIGN_VOLUME)
    quantiles = (rng.permutation(count) + rng.uniform(size=count)) / max(count, 1)
    sources = []
    for i, quantile in enumerate(quantiles):
        volume = round(low * (high / low) ** quantile)
        images, origins, camera = w.popular(volume, rng)
        pace = str(rng.choice(BENIGN_PACES, p=[0.5, 0.3, 0.2]))
        name = f"10.0.{i // 250}.{i % 250 + 1}"
        source = SimSource(name, f"benign-{camera}", False, list(images), [name], pace=pace)
        source.origins, source.labels = origins.tolist(), w.data.y[origins].tolist()
        source.seconds = _benign_offsets(pace, volume, span, rng).tolist()
        source.sent_from = [name] * volume
        sources.append(source)
    return sources


def _records(sources: list[SimSource], model: str, start: datetime, seed: int) -> list[dict]:
    """One record per image, pixels on the 8-bit grid, sorted by time (then id)."""
    records = []
    for source in sources:
        sends = zip(source.images, source.seconds, source.sent_from, strict=True)
        for k, (image, second, address) in enumerate(sends):
            ts = start + timedelta(seconds=round(second, 3))
            digest = hashlib.blake2b(f"{seed}/{source.name}/{k}".encode(), digest_size=6)
            pixels = (image.squeeze(0).double() * 255).round() / 255
            records.append(
                {
                    "id": f"req-{digest.hexdigest()}",
                    "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "source": address,
                    "model": model,
                    "input": {"array": np.round(pixels.numpy(), 4).tolist()},
                }
            )
    records.sort(key=lambda r: (r["ts"], r["id"]))  # one fixed format: text order is time order
    return records
