"""FGSM: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial Examples", 2015."""

from __future__ import annotations

import torch
from torch import nn

from monitor.attacks.core import (
    AttackStats,
    attack_mode,
    check_inputs,
    get_norm,
    input_gradient,
)


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    targeted: bool = False,
    norm: str = "linf",
    stats: AttackStats | None = None,
) -> torch.Tensor:
    """Fast Gradient Sign Method, L∞: ``clamp(x + eps·sign(∇x CE(f(x), y)), 0, 1)``.

    With ``norm="l2"`` the step is eps·g/‖g‖₂ instead (the fast gradient method, FGM).
    One forward and one backward pass. ``x`` N×C×H×W in [0, 1]; ``y`` labels N (targets when
    ``targeted``: the step then descends the loss towards them). Returns x_adv on x's device.
    """
    check_inputs(x, y, eps)
    with attack_mode(model) as device:
        xd, yd = x.detach().to(device), y.to(device)
        grad, _ = input_gradient(model, xd, yd, targeted, stats)
        x_adv = get_norm(norm).step(xd, grad, eps).clamp_(0.0, 1.0)
    return x_adv.to(x.device)
