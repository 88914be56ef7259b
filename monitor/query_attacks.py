"""The queries of query-based black-box searches, in the order an attacker sends them: SimBA
(Guo et al. 2019, one pixel at a time) and the L∞ Square attack (Andriushchenko et al. 2020,
random square blocks). Used by ``monitor.simulate`` to produce probing traffic: each function
returns every query, not only the final adversarial example.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

ProbabilityFn = Callable[[torch.Tensor], torch.Tensor]


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


def square_queries(
    probabilities: ProbabilityFn,
    x: torch.Tensor,
    y: int,
    eps: float = 0.2,
    budget: int = 200,
    seed: int = 0,
    p_init: float = 0.3,
) -> list[torch.Tensor]:
    """Every query the L∞ Square attack sends on one image (C×H×W), in order.

    Andriushchenko et al., "Square Attack", ECCV 2020: start from vertical stripes of ±eps, then
    set a random square (a share ``p`` of the pixels, halved on the paper's schedule) to ±eps
    per channel, kept when the true class's probability falls; stops once the label flips.
    """
    gen = torch.Generator().manual_seed(seed)
    c, h, w = x.shape

    def signs(*shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=gen).to(x.dtype) * 2 - 1

    delta = eps * signs(c, 1, w).expand(c, h, w).clone()
    probs = probabilities((x + delta).clamp(0, 1)[None])[0]
    queries = [(x + delta).clamp(0, 1)]
    while len(queries) < budget and int(probs.argmax()) == y:
        halvings = sum(len(queries) > t for t in (10, 50, 200, 500, 1000, 2000, 4000, 6000))
        side = max(1, min(h, w, round(math.sqrt(p_init / 2**halvings * h * w))))
        row, col = (int(torch.randint(0, n - side + 1, (1,), generator=gen)) for n in (h, w))
        candidate = delta.clone()
        candidate[:, row : row + side, col : col + side] = eps * signs(c, 1, 1)
        image = (x + candidate).clamp(0, 1)
        new = probabilities(image[None])[0]
        queries.append(image)
        if float(new[y]) < float(probs[y]):
            delta, probs = candidate, new
    return queries


# -- benign pictures: a popular pool, per-source cameras, per-send edits ----------------------
