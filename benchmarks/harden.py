"""Adversarial training time per epoch against standard training, and against ART.

    OMP_NUM_THREADS=1 python benchmarks/harden.py [--eps 0.1] [--epochs 10] [--device cpu]

One recipe for all three: the 8×8 demo CNN on the digits train split, batches of 64, Adam
(lr 1e-3), FGSM-RS at eps (random start, step 1.25·eps), half of each batch clean. Printed:
seconds per epoch (median over --epochs) for standard training (clean batches only), ours
(``monitor.harden.training``) and ART's ``AdversarialTrainer`` with the same attack and ratio when
ART is installed; ratios of ours against standard (the floor: crafting costs one extra forward
and backward pass on half of each batch, so 1.5× of standard training) and of ART against ours.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks._timing import sync, table
from monitor import architectures
from monitor.datasets import load_dataset
from monitor.harden.training import Recipe, adversarial_training


def fresh_model(device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return architectures.digits_cnn().to(device)


def standard_epochs(x, y, epochs: int, batch: int, device) -> list[float]:
    model = fresh_model(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(epochs):
        started = time.perf_counter()
        order = torch.randperm(len(x), device=device)
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def our_epochs(x, y, recipe: Recipe, device) -> list[float]:
    model = fresh_model(device)
    result = adversarial_training(model, x, y, recipe)
    return [e.seconds for e in result.epochs]


def art_epochs(x, y, recipe: Recipe) -> list[float] | None:
    try:
        from art.attacks.evasion import ProjectedGradientDescent
        from art.defences.trainer import AdversarialTrainer
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    model = fresh_model(torch.device("cpu"))
    classifier = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=recipe.lr),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )
    fgsm_rs = ProjectedGradientDescent(
        classifier,
        eps=recipe.eps,
        eps_step=1.25 * recipe.eps,
        max_iter=1,
        num_random_init=1,
        batch_size=recipe.batch_size,
        verbose=False,
    )
    trainer = AdversarialTrainer(classifier, attacks=fgsm_rs, ratio=1 - recipe.clean_ratio)
    xs, ys = x.numpy(), y.numpy()
    times = []
    for _ in range(recipe.epochs):
        started = time.perf_counter()
        trainer.fit(xs, ys, nb_epochs=1, batch_size=recipe.batch_size)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.device(args.device)
    train = load_dataset("digits", "train")
    x, y = train.x.to(device), train.y.to(device)
    recipe = Recipe("fgsm-rs", args.eps, epochs=args.epochs)
    standard = statistics.median(standard_epochs(x, y, args.epochs, recipe.batch_size, device))
    ours = statistics.median(our_epochs(x, y, recipe, device))
    rows = [
        ("standard training", f"{standard:.3f}", "1.00×", ""),
        ("ours, FGSM-RS", f"{ours:.3f}", f"{ours / standard:.2f}×", "1.00×"),
    ]
    art = art_epochs(train.x, train.y, recipe) if device.type == "cpu" else None
    if art is not None:
        art_median = statistics.median(art)
        rows.append(
            (
                "ART AdversarialTrainer, FGSM-RS",
                f"{art_median:.3f}",
                f"{art_median / standard:.2f}×",
                f"{art_median / ours:.2f}×",
            )
        )
    else:
        print("(ART not installed or not on the CPU: its row is skipped)")
    print(
        f"\n8×8 demo CNN, digits train split ({len(x)} images), batch {recipe.batch_size}, "
        f"eps {args.eps}, {args.device}; medians of {args.epochs} epochs"
    )
    print(table(rows, ("training", "s/epoch", "vs standard", "vs ours")))


if __name__ == "__main__":
    main()
