"""Supervised training of small classifiers (demo models, tests, adversarial training)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# (model, x, y) -> x' : replaces part of each batch, e.g. with adversarial examples
BatchTransform = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
# (epoch, epochs, stats) -> None
EpochCallback = Callable[[int, int, "EpochStats"], None]


@dataclass
class EpochStats:
    loss: float
    clean_accuracy: float
    transformed_accuracy: float | None
    seconds: float


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    seed: int = 0,
    transform: BatchTransform | None = None,
    transform_ratio: float = 0.5,
    on_epoch: EpochCallback | None = None,
) -> list[EpochStats]:
    """Adam on cross-entropy; with ``transform``, that share of each batch is replaced by it.

    The model is left in eval mode. ``transform_ratio`` is the share of each batch passed through
    ``transform`` (adversarial training: the rest stays clean, all keep their true labels).
    """
    import time

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        total_loss, correct, adv_correct, adv_seen, seen = 0.0, 0, 0, 0, 0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx]
            n_adv = round(len(idx) * transform_ratio) if transform else 0
            if n_adv:
                model.eval()
                xb = torch.cat([transform(model, xb[:n_adv], yb[:n_adv]).detach(), xb[n_adv:]])
            model.train()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            hits = (logits.argmax(1) == yb).detach()
            total_loss += float(loss.detach()) * len(idx)
            adv_correct += int(hits[:n_adv].sum())
            adv_seen += n_adv
            correct += int(hits[n_adv:].sum())
            seen += len(idx) - n_adv
        stats = EpochStats(
            loss=total_loss / len(x),
            clean_accuracy=correct / max(seen, 1),
            transformed_accuracy=adv_correct / adv_seen if adv_seen else None,
            seconds=time.perf_counter() - started,
        )
        history.append(stats)
        if on_epoch:
            on_epoch(epoch + 1, epochs, stats)
    model.eval()
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Share of ``x`` the model classifies as ``y``."""
    hits = sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(x), batch_size)
    )
    return hits / max(len(x), 1)
