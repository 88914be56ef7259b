"""Simulated production traffic: benign sources and attackers of every kind the alerts must
catch, as production log records (used by the demo, the tests and benchmarks/alerts.py).

Attackers: white-box FGSM and PGD on the target; a transfer attack crafted on a surrogate;
a query-based black-box attack (SimBA, Guo et al. 2019: one pixel at a time, ±step, kept when
the true class's probability falls) whose queries are near-duplicates; the same query attack
spread over ten addresses; and a mixer that hides a few PGD inputs in mostly clean traffic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import torch

from monitor.attacks import fgsm, pgd
from monitor.datasets import Dataset
from monitor.detect.calibration import benign_corruptions

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class SimSource:
    name: str
    kind: str  # benign, benign-blur, ..., fgsm, pgd, transfer, query, query-distributed, mixed
    attacker: bool
    images: list[torch.Tensor] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)  # several for a distributed attacker
    # when it sends, as fractions of the simulated period: benign all along, attackers in a burst
    begin: float = 0.0
    length: float = 1.0


@dataclass
class Traffic:
    sources: list[SimSource]
    records: list[dict]  # sorted by ts

    def lines(self) -> list[str]:
        return [json.dumps(r) for r in self.records]

    def attacker_addresses(self) -> dict[str, str]:
        """address -> attacker kind."""
        return {a: s.kind for s in self.sources if s.attacker for a in s.addresses}

    def benign_addresses(self) -> set[str]:
        return {a for s in self.sources if not s.attacker for a in s.addresses}


def simba_queries(
    probabilities: ProbabilityFn,
    x: torch.Tensor,
    y: int,
    step: float = 0.2,
    budget: int = 200,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Every query SimBA-pixel sends while attacking one image (C×H×W), in order."""
    gen = torch.Generator().manual_seed(seed)
    current = x.clone()
    best = float(probabilities(current[None])[0, y])
    queries = [current.clone()]
    for index in torch.randperm(x.numel(), generator=gen).tolist():
        for sign in (1.0, -1.0):
            if len(queries) >= budget:
                return queries
            candidate = current.clone().view(-1)
            candidate[index] = (candidate[index] + sign * step).clamp(0, 1)
            candidate = candidate.view_as(x)
            probs = probabilities(candidate[None])[0]
            queries.append(candidate)
            if float(probs[y]) < best:
                current, best = candidate, float(probs[y])
                if int(probs.argmax()) != y:
                    return queries
                break
    return queries


def simulate(
    data: Dataset,
    target: torch.nn.Module,
    surrogate: torch.nn.Module,
    *,
    model: str = "digits-cnn",
    benign: int = 30,
    per_source: int = 45,
    eps: float = 0.1,
    start: datetime | None = None,
    minutes: float = 30.0,
    seed: int = 0,
) -> Traffic:
    """Benign sources (half of them blurred, JPEG-compressed or noisy) spread over ``minutes``
    of record time, and one source per attacker kind sending in a burst in the middle third."""
    gen = torch.Generator().manual_seed(seed)
    x, y = data.x, data.y
    order = torch.randperm(len(x), generator=gen).tolist()

    def probabilities(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(target(batch), dim=1)

    def sample(n: int) -> torch.Tensor:
        """Images no other source sends (people rarely send each other's photos)."""
        if len(order) < n:
            raise ValueError(f"{len(x)} images are too few for this much traffic")
        return torch.tensor([order.pop() for _ in range(n)])

    sources = []
    variants = ["clean", "clean", "clean", "blur", "jpeg", "noise"]
    for i in range(benign):
        variant = variants[i % len(variants)]
        idx = sample(per_source)
        images = x[idx] if variant == "clean" else benign_corruptions(x[idx], seed + i)[variant]
        name = f"10.0.{i // 250}.{i % 250 + 1}"
        sources.append(SimSource(name, f"benign-{variant}", False, list(images), [name]))
    idx = sample(per_source)
    sources.append(
        SimSource("10.66.0.1", "fgsm", True, list(fgsm(target, x[idx], y[idx], eps)), ["10.66.0.1"])
    )
    idx = sample(per_source)
    sources.append(
        SimSource(
            "10.66.0.2",
            "pgd",
            True,
            list(pgd(target, x[idx], y[idx], eps, seed=seed)),
            ["10.66.0.2"],
        )
    )
    idx = sample(per_source)
    sources.append(
        SimSource(
            "10.66.0.3",
            "transfer",
            True,
            list(pgd(surrogate, x[idx], y[idx], 2 * eps, steps=20, early_stop=False, seed=seed)),
            ["10.66.0.3"],
        )
    )
    queries: list[torch.Tensor] = []
    for j in sample(8).tolist():
        queries += simba_queries(probabilities, x[j], int(y[j]), budget=60, seed=seed + j)
    sources.append(SimSource("10.66.0.4", "query", True, queries[: per_source * 2], ["10.66.0.4"]))
    spread: list[torch.Tensor] = []
    for j in sample(8).tolist():
        spread += simba_queries(probabilities, x[j], int(y[j]), budget=60, seed=seed + 100 + j)
    sources.append(
        SimSource(
            "10.77.0.x",
            "query-distributed",
            True,
            spread[: per_source * 2],
            [f"10.77.0.{k}" for k in range(1, 11)],
        )
    )
    mixed_idx = sample(per_source * 2)
    mixed = list(x[mixed_idx])
    adversarial = pgd(target, x[mixed_idx[::6]], y[mixed_idx[::6]], eps, seed=seed)
    for k, image in enumerate(adversarial):
        mixed[k * 6] = image  # one input in six is adversarial
    sources.append(SimSource("10.66.0.5", "mixed", True, mixed, ["10.66.0.5"]))
    for source in sources:
        if source.attacker:
            source.begin, source.length = 1 / 3, 1 / 3
    return Traffic(sources, _records(sources, model, start, minutes))


def _records(
    sources: list[SimSource], model: str, start: datetime | None, minutes: float
) -> list[dict]:
    from datetime import UTC

    start = start or datetime(2026, 11, 24, 19, 0, tzinfo=UTC)
    records = []
    for source in sources:
        count = len(source.images)
        for k, image in enumerate(source.images):
            address = source.addresses[k % len(source.addresses)]
            fraction = source.begin + source.length * (k + 0.5) / count
            ts = start + timedelta(seconds=minutes * 60 * fraction)
            records.append(
                {
                    "id": f"{source.name}-{k}",
                    "ts": ts.isoformat().replace("+00:00", "Z"),
                    "source": address,
                    "model": model,
                    "input": {"array": image.clamp(0, 1).squeeze(0).tolist()},
                }
            )
    records.sort(key=lambda r: r["ts"])
    return records
