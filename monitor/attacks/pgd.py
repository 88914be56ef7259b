"""PGD: Madry, Makelov, Schmidt, Tsipras & Vladu, "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018 (L∞ and L2)."""

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


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    early_stop: bool = True,
    targeted: bool = False,
    seed: Seed = None,
    stats: AttackStats | None = None,
) -> torch.Tensor:
    """Projected gradient descent on the cross-entropy, in the L∞ or L2 ball of radius ``eps``.

    Defaults: 10 steps of size 2.5·eps/steps from a uniform random start, one restart.
    ``early_stop`` stops spending passes on samples already misclassified (or at their target)
    and keeps their first successful example; each restart runs only on samples not yet fooled,
    and per sample the strongest result is kept (success first, then the higher loss).
    ``seed``: an int seeds one generator for the batch; one seed per sample makes each
    sample's random starts independent of the batch it is in.
    ``x`` N×C×H×W in [0, 1]; returns x_adv on x's device, inside the ball and inside [0, 1].
    """
    check_inputs(x, y, eps)
    if steps < 1 or restarts < 1:
        raise ValueError("steps and restarts must be at least 1")
    spec = get_norm(norm)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    with attack_mode(model) as device:
        x0, y0 = x.detach().to(device), y.to(device)
        gen = make_generator(seed, device)
        run = lambda xs, ys, g, final_check: _run(  # noqa: E731
            model,
            xs,
            ys,
            eps,
            spec,
            steps,
            alpha,
            random_start,
            early_stop,
            targeted,
            g,
            stats,
            final_check,
        )
        if restarts == 1:
            return run(x0, y0, gen, False)[0].to(x.device)
        best = x0.clone()
        best_loss = torch.full((len(x0),), -torch.inf, device=device)
        done = torch.zeros(len(x0), dtype=torch.bool, device=device)
        for _ in range(restarts):
            idx = (
                (~done).nonzero().squeeze(1) if early_stop else torch.arange(len(x0), device=device)
            )
            if idx.numel() == 0:
                break
            adv, fooled, loss = run(x0[idx], y0[idx], subset(gen, idx), True)
            open_ = ~done[idx]  # a sample already fooled keeps its first success
            better = open_ & (fooled | (loss > best_loss[idx]))
            best[idx[better]] = adv[better]
            best_loss[idx[better]] = loss[better]
            done[idx] |= fooled
    return best.to(x.device)


def _run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    spec: Norm,
    steps: int,
    alpha: float,
    random_start: bool,
    early_stop: bool,
    targeted: bool,
    gen: Generators,
    stats: AttackStats | None,
    final_check: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One restart: (x_adv, fooled, loss); fooled and loss are known only with final_check."""
    adv = spec.random_start(x, eps, gen) if random_start else x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    loss = torch.full((len(x),), -torch.inf, device=x.device)
    active = torch.arange(len(x), device=x.device)
    for _ in range(steps):
        everyone = active.numel() == len(x)
        xa, xs, ya = (adv, x, y) if everyone else (adv[active], x[active], y[active])
        grad, logits = input_gradient(model, xa, ya, targeted, stats)
        if early_stop:
            hit = succeeded(logits, ya, targeted)
            if hit.any():  # these keep x_adv as it is now: their first successful example
                fooled[active[hit]] = True
                keep = ~hit
                active, xa, xs, grad = active[keep], xa[keep], xs[keep], grad[keep]
                if active.numel() == 0:
                    return adv, fooled, loss
        stepped = spec.project(spec.step(xa, grad, alpha), xs, eps)
        if active.numel() == len(x):
            adv = stepped
        else:
            adv[active] = stepped
    if final_check and active.numel():
        with torch.no_grad():
            logits = model(adv[active])
        if stats is not None:
            stats.forward += active.numel()
        fooled[active] = succeeded(logits, y[active], targeted)
        loss[active] = attacker_loss(logits, y[active], targeted)
    return adv, fooled, loss
