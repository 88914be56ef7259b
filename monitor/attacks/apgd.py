"""APGD-CE: Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020 (L∞ and L2).

PGD with a step size that adapts per sample (it starts at 2·eps and halves at checkpoints where
the loss stopped rising), momentum 0.75, and a restart from the best point found. Plain PGD with a
fixed step overestimates the robustness of adversarially trained models; APGD does not need its
step size tuned. Same API as ``pgd``.
"""

from __future__ import annotations

import torch
from torch import nn

from monitor.attacks.core import (
    AttackStats,
    Generators,
    Norm,
    Seed,
    attack_mode,
    attacker_loss,
    check_inputs,
    get_norm,
    input_gradient,
    make_generator,
    subset,
    succeeded,
)

MOMENTUM = 0.75
RHO = 0.75  # a step size is kept while at least this share of steps since the checkpoint gained


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 100,
    restarts: int = 1,
    targeted: bool = False,
    seed: Seed = None,
    stats: AttackStats | None = None,
) -> torch.Tensor:
    """APGD on the cross-entropy in the L∞ or L2 ball of radius ``eps``.

    Defaults: 100 steps (the paper's), one restart from a random point; each further restart
    runs only on samples not yet fooled. Per sample the first successful example is kept, else
    the point of highest loss. ``seed`` as in ``pgd`` (an int, or one per sample).
    ``x`` N×C×H×W in [0, 1]; returns x_adv on x's device.
    """
    check_inputs(x, y, eps)
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be at least 1")
    spec = get_norm(norm)
    with attack_mode(model) as device:
        x0, y0 = x.detach().to(device), y.to(device)
        gen = make_generator(seed, device)
        best = x0.clone()
        done = torch.zeros(len(x0), dtype=torch.bool, device=device)
        for _ in range(restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, fooled = _run(
                model, x0[idx], y0[idx], eps, spec, steps, targeted, subset(gen, idx), stats
            )
            best[idx] = adv
            done[idx] |= fooled
    return best.to(x.device)


def _checkpoints(steps: int) -> tuple[int, int, int]:
    """(first period, its decrease, smallest period) as in the paper: 22%, 3%, 6% of steps."""
    return max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)


def _run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    spec: Norm,
    steps: int,
    targeted: bool,
    gen: Generators,
    stats: AttackStats | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One restart: (x_adv, fooled) per sample."""
    n = len(x)
    shape = (n,) + (1,) * (x.ndim - 1)
    adv = spec.random_start(x, eps, gen)
    grad, logits, loss = _gradient(model, adv, y, targeted, stats)
    fooled = succeeded(logits, y, targeted)
    found = adv.clone()  # first successful example per sample
    best, best_loss, best_grad = adv.clone(), loss.clone(), grad.clone()
    step = torch.full(shape, 2.0 * eps, device=x.device)
    previous = adv.clone()
    period, decrease, smallest = _checkpoints(steps)
    since, gains = 0, torch.zeros(n, device=x.device)
    reduced_last = torch.zeros(n, dtype=torch.bool, device=x.device)
    loss_at_check = best_loss.clone()
    last_loss = loss
    for i in range(steps):
        with torch.no_grad():
            momentum = MOMENTUM if i > 0 else 1.0
            z = spec.project(adv + _direction(spec, grad, step), x, eps)
            moved = adv + momentum * (z - adv) + (1.0 - momentum) * (adv - previous)
            previous, adv = adv, spec.project(moved, x, eps)
        # only samples not yet fooled cost a forward and backward pass (early stop)
        active = (~fooled).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        g, logits, l_ = _gradient(model, adv[active], y[active], targeted, stats)
        grad, loss = grad.clone(), loss.clone()
        grad[active], loss[active] = g, l_
        hit = torch.zeros_like(fooled)
        hit[active] = succeeded(logits, y[active], targeted)
        found[hit] = adv[hit]
        fooled |= hit
        gains += (loss > last_loss).float()
        last_loss = loss
        better = loss > best_loss
        best[better], best_loss[better], best_grad[better] = adv[better], loss[better], grad[better]
        since += 1
        if since == period:  # checkpoint: halve the step where progress stalled
            oscillating = gains <= period * RHO
            stalled = ~reduced_last & (loss_at_check >= best_loss)
            halve = oscillating | stalled
            reduced_last, loss_at_check = halve, best_loss.clone()
            step[halve] /= 2.0
            adv[halve], grad[halve] = best[halve], best_grad[halve]
            period, since, gains = max(period - decrease, smallest), 0, torch.zeros_like(gains)
    return torch.where(fooled.view(shape), found, best), fooled


def _direction(spec: Norm, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The displacement: the gradient's sign (L∞) or unit direction (L2) times the step size."""
    return spec.step(torch.zeros_like(grad), grad, 1.0) * step


def _gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    targeted: bool,
    stats: AttackStats | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input gradient, logits and per-sample attacker loss at x."""
    grad, logits = input_gradient(model, x, y, targeted, stats)
    return grad, logits, attacker_loss(logits, y, targeted).detach()
