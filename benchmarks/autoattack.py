"""Gate-grade audits against AutoAttack: robust accuracy and CPU time of robmon's presets beside
AutoAttack (``version='standard'``: APGD-CE, APGD-T, FAB-T, Square) with the official settings,
built from torchattacks' ports, on the same samples, on one CPU thread. (torchattacks' own
``AutoAttack`` runs APGD, APGD-T and FAB for 10 steps, not the official 100: ``--stock``.)

    OMP_NUM_THREADS=1 python benchmarks/autoattack.py                  # every model, 300 images
    OMP_NUM_THREADS=1 python benchmarks/attacks.py --cases autoattack  # the same, from attacks.py
    OMP_NUM_THREADS=1 python benchmarks/autoattack.py --models pgd28 --n 500 --eps 0.3

Models, trained here on the built-in digits (no download):
  plain        the demo's 8×8 digits CNN (ordinary training)
  fgsm-rs      that CNN fine-tuned by FGSM-RS at eps 0.2 (``robmon harden --method fgsm-rs``)
  pgd          that CNN fine-tuned by PGD-7 at eps 0.2 (``robmon harden --method pgd``)
  pgd28        a 28×28 CNN trained by PGD-10 at eps 0.2 on digits28 (Madry et al.'s recipe; the
               upsampled 8×8 digits do not support robustness at 0.3)

Robust accuracy counts samples correct both clean and attacked, as AutoAttack does; robmon's
numbers come from ``monitor.audit.measure`` (the audit's own code path, early stopping and
batching included). Times in the table are CPU seconds of this process (``time.process_time``);
the per-attack times of the progress lines are the cells' own wall-clock seconds. torchattacks
is a benchmark dependency only (``pip install --no-deps torchattacks==3.5.1``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import table
from monitor import architectures
from monitor.audit.config import config_from
from monitor.audit.measure import Attackers, measure
from monitor.audit.presets import PRESETS
from monitor.classifiers import TorchClassifier
from monitor.datasets import load_dataset
from monitor.harden.training import Recipe, adversarial_training
from monitor.training import train_classifier

# name -> (dataset, architecture, recipe of adversarial training or None, eps grid)
MODELS = {
    "plain": ("digits", "digits-cnn", None, (0.1, 0.2, 0.3)),
    "fgsm-rs": ("digits", "digits-cnn", Recipe("fgsm-rs", 0.2, epochs=10), (0.1, 0.2, 0.3)),
    "pgd": ("digits", "digits-cnn", Recipe("pgd", 0.2, epochs=10, steps=7), (0.1, 0.2, 0.3)),
    "pgd28": ("digits28", "cnn28", Recipe("pgd", 0.2, epochs=20, steps=10), (0.1, 0.2, 0.3)),
}  # fmt: skip


def build(name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The model trained as MODELS says, and its test split."""
    dataset, arch, recipe, _ = MODELS[name]
    train, test = load_dataset(dataset, "train"), load_dataset(dataset)
    torch.manual_seed(0)
    model = architectures.ARCHITECTURES[arch]()
    train_classifier(model, train.x, train.y, epochs=30, lr=2e-3, seed=0)
    if recipe is not None:
        adversarial_training(model, train.x, train.y, recipe)
    return model.eval(), test.x, test.y


def ours(model, x, y, eps: float, preset: str) -> tuple[float, float, dict]:
    """Robust accuracy, CPU seconds and the per-attack worst case of a robmon preset."""
    config = config_from({"preset": preset}, {"dataset": "digits", "eps": (eps,)})
    started = time.process_time()
    m = measure(Attackers(TorchClassifier("bench", model)), x, y, config, batch_size=500)
    seconds = time.process_time() - started  # the credibility probe included (AA has none)
    per_attack = {c.attack: (c.robust_accuracy, c.seconds) for c in m.cells}
    return min(v for v, _ in per_attack.values()), seconds, per_attack


def autoattack(model, x, y, eps: float, stock: bool = False) -> tuple[float, float]:
    """Robust accuracy and CPU seconds of AutoAttack's standard version with the official
    settings (APGD-CE and APGD-T 100 steps, 9 targets; FAB-T 100 steps, 9 targets; Square 5000
    queries), built from torchattacks' ports. ``stock``: torchattacks' own ``AutoAttack``,
    whose APGD, APGD-T and FAB default to 10 steps (weaker and faster than the official)."""
    import torchattacks as ta

    if stock:
        attack = ta.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=10,
                               seed=0)  # fmt: skip
    else:
        attack = ta.MultiAttack([
            ta.APGD(model, eps=eps, steps=100, loss="ce", n_restarts=1, seed=0),
            ta.APGDT(model, eps=eps, steps=100, n_classes=10, n_restarts=1, seed=0),
            ta.FAB(model, eps=eps, steps=100, multi_targeted=True, n_classes=10, seed=0),
            ta.Square(model, eps=eps, n_queries=5000, n_restarts=1, seed=0),
        ])  # fmt: skip
    started = time.process_time()
    adv = attack(x, y)
    seconds = time.process_time() - started
    with torch.no_grad():
        clean, attacked = model(x).argmax(1) == y, model(adv).argmax(1) == y
    return float((clean & attacked).float().mean()), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names")
    parser.add_argument("--n", type=int, default=300, help="test images per model")
    parser.add_argument("--eps", help="comma-separated radii (default: each model's grid)")
    parser.add_argument("--presets", default="quick,standard", help=", ".join(PRESETS))
    parser.add_argument("--no-autoattack", action="store_true")
    parser.add_argument(
        "--stock", action="store_true", help="torchattacks' AutoAttack as shipped (10 steps)"
    )
    args = parser.parse_args([] if __name__ != "__main__" else sys.argv[1:])
    torch.set_num_threads(1)
    rows = []
    for name in args.models.split(","):
        model, x, y = build(name)
        x, y = x[: args.n], y[: args.n]
        grid = [float(e) for e in args.eps.split(",")] if args.eps else MODELS[name][3]
        for eps in grid:
            row = [name, f"{eps:g}"]
            times = {}
            for preset in args.presets.split(","):
                acc, seconds, per_attack = ours(model, x, y, eps, preset)
                times[preset] = seconds
                row += [f"{acc:.3f}", f"{seconds:.0f}"]
                steps = ", ".join(f"{a} {v:.3f} in {t:.0f} s" for a, (v, t) in per_attack.items())
                print(f"{name} eps {eps:g} {preset}: {steps} ({seconds:.0f} s)", flush=True)
            if not args.no_autoattack:
                acc, seconds = autoattack(model, x, y, eps, args.stock)
                row += [f"{acc:.3f}", f"{seconds:.0f}"]
                row += [f"{seconds / max(times.get('standard', seconds), 1e-9):.1f}×"]
                print(f"{name} eps {eps:g} AutoAttack: {acc:.3f} ({seconds:.0f} s)", flush=True)
            rows.append(tuple(row))
    header = ["model", "eps"]
    for preset in args.presets.split(","):
        header += [f"{preset} acc", f"{preset} s"]
    if not args.no_autoattack:
        header += ["AutoAttack acc", "AutoAttack s", "AA s / standard s"]
    print(f"\n{args.n} test images per model, one CPU thread, CPU seconds\n")
    print(table(rows, tuple(header)))


if __name__ == "__main__":
    main()
