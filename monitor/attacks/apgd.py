"""APGD-CE, APGD-DLR and APGD-T: Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020 (L∞ and L2).

PGD with a step size that adapts per sample (it starts at 2·eps and halves at checkpoints where
the loss stopped rising), momentum 0.75, and a restart from the best point found. Plain PGD with a
fixed step overestimates the robustness of adversarially trained models; APGD does not need its
step size tuned. ``apgd`` has the same API as ``pgd``; ``apgd_targeted`` is AutoAttack's APGD-T,
the targeted DLR loss towards each of the top-ranked wrong classes in turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

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
    dlr_loss,
    get_norm,
    input_gradient,
    make_generator,
    subset,
    succeeded,
)

MOMENTUM = 0.75
RHO = 0.75  # a step size is kept while at least this share of steps since the checkpoint gained


@dataclass(frozen=True)
class _Objective:
    """What a run ascends and what counts as success.

    ``targeted``: y is the target class and success is being classified as y; otherwise success
    is a misclassification. ``target``: APGD-T's class per sample for the targeted DLR loss
    (y stays the true label, success a misclassification, as AutoAttack counts it).
    """

    loss: str = "ce"
    targeted: bool = False
    target: torch.Tensor | None = None

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.loss](logits, y, self)

    def subset(self, idx: torch.Tensor) -> _Objective:
        return self if self.target is None else replace(self, target=self.target[idx])


LOSSES = {
    "ce": lambda logits, y, o: attacker_loss(logits, y, o.targeted),
    "dlr": lambda logits, y, o: dlr_loss(logits, y, o.target),
}


@dataclass
class _Best:
    """Per sample, the result so far: the first successful example, else the highest-loss point."""

    x: torch.Tensor
    loss: torch.Tensor
    done: torch.Tensor  # success found: later runs skip the sample

    @staticmethod
    def start(x: torch.Tensor, done: torch.Tensor | None = None) -> _Best:
        loss = torch.full((len(x),), -torch.inf, device=x.device)
        unfooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        return _Best(x.clone(), loss, unfooled if done is None else done)


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
    loss: str = "ce",
    seed: Seed = None,
    stats: AttackStats | None = None,
) -> torch.Tensor:
    """APGD on the cross-entropy (``loss="ce"``) or the DLR loss (``"dlr"``, untargeted only)
    in the L∞ or L2 ball of radius ``eps``.

    Defaults: 100 steps (the paper's), one restart from a random point; each further restart
    runs only on samples not yet fooled. Per sample the first successful example is kept, else
    the point of highest loss. ``seed`` as in ``pgd`` (an int, or one per sample).
    ``x`` N×C×H×W in [0, 1]; returns x_adv on x's device.
    """
    check_inputs(x, y, eps)
    _check_counts(steps, restarts)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {loss!r}")
    if targeted and loss == "dlr":
        raise ValueError("the targeted DLR loss needs the true labels too: use apgd_targeted")
    spec = get_norm(norm)
    with attack_mode(model) as device:
        x0, y0 = x.detach().to(device), y.to(device)
        gen = make_generator(seed, device)
        run = partial(_run, model, eps=eps, spec=spec, steps=steps, stats=stats)
        best = _Best.start(x0)
        _restarts(run, x0, y0, _Objective(loss, targeted), gen, restarts, best)
    return best.x.to(x.device)


def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 100,
    target_classes: int = 9,
    restarts: int = 1,
    skip_targets: int = 0,
    seed: Seed = None,
    stats: AttackStats | None = None,
) -> torch.Tensor:
    """APGD-T (AutoAttack's): APGD on the targeted DLR loss in the L∞ or L2 ball of radius
    ``eps``, towards the 2nd, 3rd, ... highest-scoring class of the clean input in turn.

    Defaults as AutoAttack's: 100 steps, 9 target classes (clipped to the number of classes
    minus one), one restart per target. Each target runs only on the samples still correctly
    classified; success is a misclassification (into any class). Per sample the clean input is
    kept where it is already misclassified, else the first misclassified example, else the
    point of highest loss. Models with fewer than 4 classes are attacked on the targeted
    cross-entropy (see ``dlr_loss``). ``skip_targets`` leaves out the first targets (a caller
    that ran them already: the targets are then ranks skip+2 .. target_classes+1).
    ``seed`` as in ``pgd`` (an int, or one per sample).
    ``x`` N×C×H×W in [0, 1], ``y`` N true labels; returns x_adv on x's device.
    """
    check_inputs(x, y, eps)
    _check_counts(steps, restarts)
    if target_classes < 1:
        raise ValueError(f"target_classes must be at least 1, got {target_classes}")
    spec = get_norm(norm)
    with attack_mode(model) as device:
        x0, y0 = x.detach().to(device), y.to(device)
        gen = make_generator(seed, device)
        with torch.no_grad():
            logits = model(x0)
        if stats is not None:
            stats.forward += len(x0)
        ranked = logits.argsort(dim=1, descending=True)
        run = partial(_run, model, eps=eps, spec=spec, steps=steps, stats=stats)
        best = _Best.start(x0, done=succeeded(logits, y0, targeted=False))
        for rank in range(1 + skip_targets, min(target_classes, logits.shape[1] - 1) + 1):
            objective = _Objective("dlr", target=ranked[:, rank])
            _restarts(run, x0, y0, objective, gen, restarts, best)
    return best.x.to(x.device)


def _check_counts(steps: int, restarts: int) -> None:
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be at least 1")


def _restarts(
    run: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    objective: _Objective,
    gen: Generators,
    restarts: int,
    best: _Best,
) -> None:
    """``restarts`` runs of ``_run``, each on the samples not yet done; updates ``best``."""
    for _ in range(restarts):
        idx = (~best.done).nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        adv, fooled, loss = run(
            x[idx], y[idx], objective=objective.subset(idx), gen=subset(gen, idx)
        )
        better = fooled | (loss > best.loss[idx])
        best.x[idx[better]], best.loss[idx[better]] = adv[better], loss[better]
        best.done[idx] |= fooled


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
    objective: _Objective,
    gen: Generators,
    stats: AttackStats | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One restart: (x_adv, fooled, highest loss) per sample."""
    n = len(x)
    shape = (n,) + (1,) * (x.ndim - 1)
    adv = spec.random_start(x, eps, gen)
    grad, logits, loss = _gradient(model, adv, y, objective, stats)
    fooled = succeeded(logits, y, objective.targeted)
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
        g, logits, l_ = _gradient(model, adv[active], y[active], objective.subset(active), stats)
        grad, loss = grad.clone(), loss.clone()
        grad[active], loss[active] = g, l_
        hit = torch.zeros_like(fooled)
        hit[active] = succeeded(logits, y[active], objective.targeted)
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
    return torch.where(fooled.view(shape), found, best), fooled, best_loss


def _direction(spec: Norm, grad: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """The displacement: the gradient's sign (L∞) or unit direction (L2) times the step size."""
    return spec.step(torch.zeros_like(grad), grad, 1.0) * step


def _gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    objective: _Objective,
    stats: AttackStats | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input gradient, logits and per-sample loss of ``objective`` at x."""
    grad, logits = input_gradient(model, x, y, objective.targeted, stats, loss=objective)
    return grad, logits, objective(logits, y).detach()
