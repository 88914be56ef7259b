"""FAB-T: Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack", ICML 2020 (L∞ and L2), targeted as AutoAttack runs it.

Each step linearises, at the current point, the boundary between the true class y and a target
class t (the hyperplane where z_t - z_y would be zero), projects the current point and the clean
input onto it inside [0, 1] (the smallest L∞ or L2 move), and goes to a mix of the two
projections weighted towards the clean input's (at most ``alpha_max``), overshooting by ``eta``.
Where the point is adversarial it is kept if it is the closest so far, and the search moves back
towards the clean input by ``beta``. FAB minimises the distance to the boundary instead of
ascending a loss, so it finds what a loss landscape hides from APGD. Here it attacks a radius:
a sample is done once it has an adversarial example inside the ball, and stops costing passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from monitor.attacks.core import (
    AttackStats,
    attack_mode,
    check_inputs,
    get_norm,
    input_gradient,
    succeeded,
)

_TINY = 1e-12


def fab_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 100,
    target_classes: int = 9,
    alpha_max: float = 0.1,
    eta: float = 1.05,
    beta: float = 0.9,
    skip_targets: int = 0,
    stats: AttackStats | None = None,
) -> torch.Tensor:
    """FAB-T in the L∞ or L2 ball of radius ``eps``: FAB towards the 2nd, 3rd, ... highest
    scoring class of the clean input in turn, each from the clean input.

    Defaults as AutoAttack's: 100 steps, 9 target classes (clipped to the number of classes
    minus one), alpha_max 0.1, eta 1.05, beta 0.9, one run per target without a random start
    (deterministic, no seed). Each target runs only on the samples without an adversarial
    example inside the ball yet, and a sample stops once it has one. ``skip_targets`` leaves
    out the first targets (a caller that ran them already). Per sample: the clean input where
    it is misclassified already, else the closest adversarial example found inside the ball,
    else the clean input. ``x`` N×C×H×W in [0, 1], ``y`` N true labels; returns x_adv on x's
    device.
    """
    check_inputs(x, y, eps)
    if steps < 1 or target_classes < 1:
        raise ValueError("steps and target_classes must be at least 1")
    if norm not in _PROJECTIONS:
        raise ValueError(f"fab supports norm 'linf' or 'l2', not {norm!r}")
    search = _Search(_PROJECTIONS[norm], get_norm(norm).size, eps, alpha_max, eta, beta)
    with attack_mode(model) as device:
        x0, y0 = x.detach().to(device), y.to(device)
        with torch.no_grad():
            logits = model(x0)
        if stats is not None:
            stats.forward += len(x0)
        ranked = logits.argsort(dim=1, descending=True)
        best = x0.clone()
        done = succeeded(logits, y0, targeted=False)
        for rank in range(1 + skip_targets, min(target_classes, logits.shape[1] - 1) + 1):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, found = _run(model, x0[idx], y0[idx], ranked[idx, rank], search, steps, stats)
            best[idx[found]] = adv[found]
            done[idx] |= found
    return best.to(x.device)


# (points N×D, normals N×D, offsets N) -> the smallest move N×D onto w·z = b inside [0, 1]
Projection = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class _Search:
    """One norm's FAB step and its settings."""

    project: Projection
    size: Callable[[torch.Tensor], torch.Tensor]  # per-sample norm of N×... tensors
    eps: float
    alpha_max: float
    eta: float
    beta: float


def _run(
    model: nn.Module,
    x0: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    search: _Search,
    steps: int,
    stats: AttackStats | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One target from the clean input: (closest adversarial example, found inside the ball).

    As the paper's code, but the gradient pass at each new point also says whether it is
    adversarial (the paper's code spends a forward pass at every step on that); a point that
    is, moved back by beta, needs its gradient again there.
    """
    closest = torch.full((len(x0),), torch.inf, device=x0.device)
    best, point = x0.clone(), x0.clone()
    grad, gap, _ = _boundary(model, point, y, target, stats)
    live = torch.arange(len(x0), device=x0.device)
    for i in range(steps):
        point[live] = _step(point[live], x0[live], grad[live], gap[live], search)
        g, f, logits = _boundary(model, point[live], y[live], target[live], stats)
        grad[live], gap[live] = g, f
        adversarial = live[logits.argmax(dim=1) != y[live]]
        if adversarial.numel():
            size = search.size(point[adversarial] - x0[adversarial])
            closer = size < closest[adversarial]
            best[adversarial[closer]] = point[adversarial[closer]]
            closest[adversarial[closer]] = size[closer]
            start = x0[adversarial]
            point[adversarial] = start + (point[adversarial] - start) * search.beta
            back = adversarial[closest[adversarial] > search.eps]  # not done: on from there
            if back.numel() and i < steps - 1:
                grad[back], gap[back], _ = _boundary(
                    model, point[back], y[back], target[back], stats
                )
        live = live[closest[live] > search.eps]  # early stop: an example inside the ball
        if live.numel() == 0:
            break
    found = closest <= search.eps
    return best, found


def _boundary(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    stats: AttackStats | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gap z_t - z_y at x (N), its input gradient (as x) and the logits (N×K)."""

    def gap_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = logits.float()
        return z.gather(1, target[:, None]).squeeze(1) - z.gather(1, labels[:, None]).squeeze(1)

    grad, logits = input_gradient(model, x, y, False, stats, loss=gap_of)
    return grad, gap_of(logits, y), logits


def _step(
    point: torch.Tensor, x0: torch.Tensor, grad: torch.Tensor, gap: torch.Tensor, s: _Search
) -> torch.Tensor:
    """One FAB step: both projections onto the linearised boundary, mixed and overshot."""
    n, shape = len(point), (-1,) + (1,) * (point.ndim - 1)
    w = grad.flatten(1)
    b = (w * point.flatten(1)).sum(dim=1) - gap  # the linearised gap is zero on w·z = b
    moves = s.project(torch.cat([point.flatten(1), x0.flatten(1)]), w.repeat(2, 1), b.repeat(2))
    moves = moves.view(2 * n, *point.shape[1:])
    from_point, from_clean = moves[:n], moves[n:]
    lengths = s.size(moves).clamp_min(1e-8)
    alpha = (lengths[:n] / (lengths[:n] + lengths[n:])).clamp(0.0, s.alpha_max).view(shape)
    mixed = (point + s.eta * from_point) * (1 - alpha) + (x0 + s.eta * from_clean) * alpha
    return mixed.clamp(0.0, 1.0)


def project_linf(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest L∞ move d per row with w·(t + d) = b and t + d in [0, 1] (rows N×D, b N);
    where the box does not reach the hyperplane, the move to the box's corner nearest to it.

    With the sides flipped so that w·z must come down, a move of size λ lowers w·z by
    Σ |w_i| min(λ, reach_i) (reach_i: how far coordinate i can go before its bound), piecewise
    linear in λ; λ is found on the piece that crosses the change required.
    """
    side = torch.where((w * t).sum(dim=1) >= b, 1.0, -1.0)
    w, b = w * side[:, None], b * side
    corner = (w < 0).to(t.dtype)  # where w·z is lowest inside the box
    full = (corner - t) * (w != 0)  # the move to that corner
    need = b - (w * t).sum(dim=1)  # the change of w·z required (≤ 0)
    reach, order = full.abs().sort(dim=1, descending=True)
    weight = w.abs().gather(1, order)
    free = weight.cumsum(dim=1)  # at λ = reach_k: Σ |w| of the coordinates not at their bound
    stuck = _tail_sum(weight * reach)  # and Σ |w|·reach of those at their bound
    change = -reach * free - stuck  # the change of w·z at λ = each reach
    piece = ((change < need[:, None]).sum(dim=1, keepdim=True) - 1).clamp(min=0)
    size = (need[:, None] + stuck.gather(1, piece)) / -free.gather(1, piece).clamp_min(_TINY)
    reachable = need > (w * full).sum(dim=1)
    size = torch.where(reachable[:, None], size.clamp(min=0.0), torch.inf)
    return torch.maximum(torch.minimum(full, size), -size)


def project_l2(t: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The smallest L2 move d per row with w·(t + d) = b and t + d in [0, 1] (rows N×D, b N);
    where the box does not reach the hyperplane, the move that goes furthest towards it.

    The move is -w_i·min(λ, hit_i), hit_i the λ at which coordinate i reaches its bound: with
    the sides flipped so that w·z must come down, w·z falls by Σ w_i² min(λ, hit_i), piecewise
    linear in λ; λ is found on the piece that crosses the change required.
    """
    excess = (w * t).sum(dim=1) - b
    side = torch.where(excess >= 0, 1.0, -1.0)
    w, excess = w * side[:, None], excess * side  # w·z must come down by excess ≥ 0
    moving = w.abs() > 1e-8
    safe = torch.where(moving, w, 1.0)
    hits = torch.where(moving, torch.maximum(t / safe, (t - 1) / safe), 1e12)
    hit, order = hits.sort(dim=1)
    mass = (w.pow(2) * moving).gather(1, order)  # the still ones last, with no mass
    free = _tail_sum(mass)  # at λ = hit_k: Σ w² of the coordinates not at their bound
    change = -(mass * hit).cumsum(dim=1) - hit * free  # the change of w·z at λ = each hit
    piece = (change + excess[:, None] > 0).sum(dim=1, keepdim=True) - 1
    at = piece.clamp(min=0)
    beyond = hit.gather(1, at) + (change.gather(1, at) + excess[:, None]) / free.gather(
        1, at
    ).clamp_min(_TINY)
    size = torch.where(piece >= 0, beyond, excess[:, None] / mass.sum(1, True).clamp_min(_TINY))
    reachable = excess <= (mass * torch.where(hit < 1e12, hit, 0.0)).sum(dim=1)
    size = torch.where(reachable[:, None], size, torch.inf)
    return -w * torch.minimum(hits, size) * moving


def _tail_sum(t: torch.Tensor) -> torch.Tensor:
    """Per row, the sum of the entries after each one (exactly 0 after the last non-zero)."""
    return t.flip(1).cumsum(dim=1).flip(1) - t


_PROJECTIONS: dict[str, Projection] = {"linf": project_linf, "l2": project_l2}
