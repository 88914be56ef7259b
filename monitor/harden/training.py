"""Adversarial training: each batch part clean, part adversarial, with the true labels.

- ``fgsm-rs``: FGSM from a uniform random start in the eps-ball with step 1.25·eps (Wong, Rice &
  Kolter, "Fast is better than free", ICLR 2020); the random start avoids the catastrophic
  overfitting of plain FGSM training.
- ``pgd``: PGD with a random start, ``steps`` steps of 2.5·eps/steps (Madry et al., ICLR 2018).

Pure torch: the model trains in place (in train mode where it allows switching; a model exported
with torch.export refuses, and is fine-tuned in eval mode — the same for models without dropout
or batch normalisation).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from monitor.attacks import pgd

METHODS = ("fgsm-rs", "pgd")


@dataclass(frozen=True)
class Recipe:
    """What adversarial training does; ``clean_ratio`` is the clean share of each batch."""

    method: str
    eps: float
    epochs: int = 10
    steps: int = 7  # pgd only
    clean_ratio: float = 0.5
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not 0 < self.eps <= 1:
            raise ValueError("eps must be in (0, 1]")
        if self.epochs < 1 or self.steps < 1 or self.batch_size < 2:
            raise ValueError("epochs and steps must be at least 1, batch size at least 2")
        if not 0 <= self.clean_ratio < 1:
            raise ValueError("clean ratio must be in [0, 1)")


@dataclass
class EpochStats:
    epoch: int
    loss: float
    clean_accuracy: float
    adversarial_accuracy: float
    seconds: float


@dataclass
class TrainingResult:
    epochs: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    train_mode: bool = True  # False: fine-tuned in eval mode (a pt2 module)


def craft(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """The recipe's adversarial examples for one batch (model in eval mode while crafting)."""
    if recipe.method == "fgsm-rs":
        return pgd(
            model,
            x,
            y,
            recipe.eps,
            steps=1,
            step_size=1.25 * recipe.eps,
            random_start=True,
            early_stop=False,
        )
    return pgd(model, x, y, recipe.eps, steps=recipe.steps, early_stop=False)


def adversarial_training(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
) -> TrainingResult:
    """Train ``model`` in place on (x, y) (N×C×H×W in [0, 1]) with the recipe."""
    torch.manual_seed(recipe.seed)
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    result = TrainingResult(train_mode=_can_switch(model))
    started = time.perf_counter()
    for epoch in range(1, recipe.epochs + 1):
        began = time.perf_counter()
        order = torch.randperm(len(x), device=device)
        totals = torch.zeros(4)  # loss sum, clean right, adversarial right, adversarial count
        n_clean = 0
        for start in range(0, len(x), recipe.batch_size):
            idx = order[start : start + recipe.batch_size]
            xb, yb = x[idx], y[idx]
            k = round(len(idx) * recipe.clean_ratio)
            adv = craft(model, xb[k:], yb[k:], recipe)
            _set_mode(model, True)
            logits = model(torch.cat([xb[:k], adv]))
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            _set_mode(model, False)
            right = (logits.argmax(1) == yb).float().detach().cpu()
            totals += torch.tensor([loss.item() * len(idx), right[:k].sum(), right[k:].sum(), 0])
            totals[3] += len(idx) - k
            n_clean += k
        stats = EpochStats(
            epoch,
            float(totals[0]) / len(x),
            float(totals[1]) / max(n_clean, 1),
            float(totals[2]) / max(float(totals[3]), 1),
            time.perf_counter() - began,
        )
        result.epochs.append(stats)
        on_epoch(stats)
    result.seconds = time.perf_counter() - started
    return result


def _can_switch(model: nn.Module) -> bool:
    try:
        model.train(model.training)
        return True
    except NotImplementedError:
        return False


def _set_mode(model: nn.Module, training: bool) -> None:
    with contextlib.suppress(NotImplementedError):
        model.train(training)
