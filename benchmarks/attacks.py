"""Attack speed against its floor (k forward+backward passes to the input) and against ART.

    OMP_NUM_THREADS=1 python benchmarks/attacks.py --cases autoattack   # presets vs AutoAttack

    OMP_NUM_THREADS=1 python benchmarks/attacks.py            # CPU, every case at CPU sizes
    OMP_NUM_THREADS=1 python benchmarks/attacks.py --cases resnet224 --batch224 8 --steps224 3
    python benchmarks/attacks.py --device cuda                 # GPU sizes (ResNets at 1024/128)

Cases: the 8×8 demo CNN and a 28×28 CNN (trained on digits), and two ResNet-18s with random
weights (speed is measured, not accuracy; labels are the model's own predictions): the CIFAR
variant on 3×32×32 and the ImageNet variant (7×7 stem, max-pool) on 3×224×224. Sizes default
by device and scale with ``--resnet-batch``, ``--batch224``, ``--steps224``, ``--repeats224``.

Every ratio is measured in this one run (medians over repetitions). The floor is one forward
plus one backward pass to the input with the model's parameters frozen, which is what an attack
must pay per step (measured before and after the attacks; the lower counts); PGD-k is compared
with k of those. With ``adversarial-robustness-toolbox`` installed, ART's FGSM and PGD run on
the same model and data.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timing import median_seconds, table
from monitor import architectures
from monitor.attacks import apgd, fgsm, pgd
from monitor.attacks.core import attack_mode, input_gradient


def floor_seconds(model, x, y, device, repeats) -> float:
    """One forward + backward to the input, parameters frozen (set up outside the timing)."""
    with attack_mode(model):
        return median_seconds(lambda: input_gradient(model, x, y, targeted=False), device, repeats)


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def trained_digits_model(name: str, device: torch.device, epochs: int):
    from monitor.datasets import load_dataset
    from monitor.training import train_classifier

    size = "digits28" if name == "cnn28" else "digits"
    train, test = load_dataset(size, "train"), load_dataset(size)
    torch.manual_seed(0)
    model = architectures.ARCHITECTURES[name]()
    train_classifier(model, train.x, train.y, epochs=epochs, lr=2e-3, seed=0)
    return model.to(device).eval(), test.x.to(device), test.y.to(device)


def random_resnet_case(builder, size: int, device: torch.device, batch: int):
    """A ResNet with random weights on random ``size``×``size`` colour images, labelled with its
    own predictions (so clean accuracy is 1 and attacks have something to flip)."""
    torch.manual_seed(0)
    model = builder().to(device).eval()
    x = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def art_timings(model, x, y, eps, steps, repeats, device):
    try:
        import numpy as np
        from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return None
    clf = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    xn, yn = x.cpu().numpy(), y.cpu().numpy()
    art_fgsm = FastGradientMethod(clf, eps=eps, batch_size=len(xn))
    art_pgd = ProjectedGradientDescent(
        clf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps, batch_size=len(xn), verbose=False
    )
    fgsm_adv = art_fgsm.generate(xn, y=yn)
    np.random.seed(0)
    pgd_adv = art_pgd.generate(xn, y=yn)
    return {
        "fgsm_s": median_seconds(lambda: art_fgsm.generate(xn, y=yn), device, repeats),
        "pgd_s": median_seconds(lambda: art_pgd.generate(xn, y=yn), device, max(3, repeats // 2)),
        "fgsm_acc": accuracy(model, torch.as_tensor(fgsm_adv, device=device), y),
        "pgd_acc": accuracy(model, torch.as_tensor(pgd_adv, device=device), y),
    }


def bench(label, model, x, y, eps, steps, repeats, device, with_art):
    floor = floor_seconds(model, x, y, device, repeats)
    t_fgsm = median_seconds(lambda: fgsm(model, x, y, eps), device, repeats)
    t_pgd = median_seconds(
        lambda: pgd(model, x, y, eps, steps=steps, early_stop=False, seed=0), device, repeats
    )
    t_pgd_es = median_seconds(lambda: pgd(model, x, y, eps, steps=steps, seed=0), device, repeats)
    acc_fgsm = accuracy(model, fgsm(model, x, y, eps), y)
    acc_pgd = accuracy(model, pgd(model, x, y, eps, steps=steps, seed=0), y)
    # measured again after the attacks: the lower of the two, so that a machine busier (or
    # colder) at the start does not flatter the ratios
    floor = min(floor, floor_seconds(model, x, y, device, repeats))
    print(f"\n== {label}: batch {len(x)}, eps {eps:.4g}, PGD-{steps}, device {device} ==")
    print(
        f"clean accuracy {accuracy(model, x, y):.3f}; floor (1 fwd+bwd, lower of before and "
        f"after) {floor * 1e3:.2f} ms"
    )
    rows = [
        ("FGSM / 1 floor", f"{t_fgsm / floor:.3f}", f"{t_fgsm * 1e3:.1f} ms", f"{acc_fgsm:.3f}"),
        (
            f"PGD-{steps} (early stop off) / {steps} floors",
            f"{t_pgd / (steps * floor):.3f}",
            f"{t_pgd * 1e3:.1f} ms",
            "",
        ),
        (
            f"PGD-{steps} (early stop on) / {steps} floors",
            f"{t_pgd_es / (steps * floor):.3f}",
            f"{t_pgd_es * 1e3:.1f} ms",
            f"{acc_pgd:.3f}",
        ),
    ]
    art = art_timings(model, x, y, eps, steps, repeats, device) if with_art else None
    if art:
        rows += [
            (
                "ART FGSM / ours",
                f"{art['fgsm_s'] / t_fgsm:.2f}x slower",
                f"{art['fgsm_s'] * 1e3:.1f} ms",
                f"{art['fgsm_acc']:.3f}",
            ),
            (
                "ART PGD / ours (early stop off)",
                f"{art['pgd_s'] / t_pgd:.2f}x slower",
                f"{art['pgd_s'] * 1e3:.1f} ms",
                f"{art['pgd_acc']:.3f}",
            ),
            ("ART PGD / ours (early stop on)", f"{art['pgd_s'] / t_pgd_es:.2f}x slower", "", ""),
            ("ART PGD / its own floor", f"{art['pgd_s'] / (steps * floor):.3f}", "", ""),
        ]
        print(f"FGSM accuracies equal: {abs(art['fgsm_acc'] - acc_fgsm) < 1e-9}")
    elif with_art:
        print("(adversarial-robustness-toolbox is not installed: no ART comparison)")
    rows += apgd_rows(model, x, y, eps, steps, repeats, device, floor, with_art)
    if device.type == "cuda":
        rows += fast_rows(model, x, y, eps, steps, repeats, device, t_pgd, acc_pgd)
    print(table(rows, ("measure", "ratio", "time", "robust acc")))


def apgd_rows(model, x, y, eps, steps, repeats, device, floor, with_art):
    """APGD-CE at the same steps: against k floors, and ART's AutoProjectedGradientDescent."""
    t_apgd = median_seconds(lambda: apgd(model, x, y, eps, steps=steps, seed=0), device, repeats)
    acc = accuracy(model, apgd(model, x, y, eps, steps=steps, seed=0), y)
    rows = [
        (
            f"APGD-{steps} (early stop on) / {steps} floors",
            f"{t_apgd / (steps * floor):.3f}",
            f"{t_apgd * 1e3:.1f} ms",
            f"{acc:.3f}",
        )
    ]
    try:
        import numpy as np
        from art.attacks.evasion import AutoProjectedGradientDescent
        from art.estimators.classification import PyTorchClassifier
    except ImportError:
        return rows
    if not with_art:
        return rows
    clf = PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    art_apgd = AutoProjectedGradientDescent(
        clf,
        eps=eps,
        eps_step=2 * eps,
        max_iter=steps,
        nb_random_init=1,
        batch_size=len(x),
        loss_type="cross_entropy",
        verbose=False,
    )
    xn, yn = x.cpu().numpy(), y.cpu().numpy()
    np.random.seed(0)
    art_acc = accuracy(model, torch.as_tensor(art_apgd.generate(xn, y=yn), device=device), y)
    t_art = median_seconds(lambda: art_apgd.generate(xn, y=yn), device, max(3, repeats // 2))
    rows.append(
        (
            "ART AutoPGD / our APGD",
            f"{t_art / t_apgd:.2f}x slower",
            f"{t_art * 1e3:.1f} ms",
            f"{art_acc:.3f}",
        )
    )
    return rows


def fast_rows(model, x, y, eps, steps, repeats, device, t_pgd, acc_pgd):
    """Opt-in fast mode (compile + bf16 + channels_last) against eager fp32, same run."""
    import copy

    from monitor.attacks.fast import accelerate

    fast = accelerate(copy.deepcopy(model))
    t_fast = median_seconds(
        lambda: pgd(fast, x, y, eps, steps=steps, early_stop=False, seed=0),
        device,
        repeats,
        warmup=2,
    )
    acc_fast = accuracy(model, pgd(fast, x, y, eps, steps=steps, seed=0), y)
    return [
        (
            "fast PGD speed-up over eager fp32",
            f"{t_pgd / t_fast:.2f}x",
            f"{t_fast * 1e3:.1f} ms",
            f"{acc_fast:.3f}",
        ),
        ("fast robust acc - fp32 (points)", f"{100 * (acc_fast - acc_pgd):+.2f}", "", ""),
    ]


# case: (label, eps); sizes come from the options (defaults by device)
CASES = {
    "digits-cnn": ("digits-cnn on digits", 0.1),
    "cnn28": ("cnn28 on digits28", 0.1),
    "resnet32": ("ResNet-18 on 3×32×32 (random weights)", 8 / 255),
    "resnet224": ("ResNet-18 on 3×224×224 (random weights)", 8 / 255),
}
CPU_SIZES = {"resnet_batch": 32, "batch224": 8, "steps224": 3, "repeats224": 3}
GPU_SIZES = {"resnet_batch": 1024, "batch224": 128, "steps224": 10, "repeats224": 7}


def case_inputs(name: str, args: argparse.Namespace, device: torch.device):
    """Model, inputs, labels, PGD steps and repeats for one case."""
    if name == "digits-cnn":
        return (*trained_digits_model(name, device, 15), args.steps, args.repeats)
    if name == "cnn28":
        return (*trained_digits_model(name, device, 4), args.steps, args.repeats)
    if name == "resnet32":
        case = random_resnet_case(architectures.resnet18_cifar, 32, device, args.resnet_batch)
        return (*case, args.steps, args.repeats)
    case = random_resnet_case(architectures.resnet18_imagenet, 224, device, args.batch224)
    return (*case, args.steps224, args.repeats224)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--no-art", action="store_true")
    parser.add_argument(
        "--cases", default=",".join(CASES), help="comma-separated, of " + ", ".join(CASES)
    )
    parser.add_argument("--resnet-batch", type=int, help="32×32 ResNet batch (CPU 32, GPU 1024)")
    parser.add_argument("--batch224", type=int, help="224×224 ResNet batch (CPU 8, GPU 128)")
    parser.add_argument("--steps224", type=int, help="PGD steps at 224×224 (CPU 3, GPU 10)")
    parser.add_argument("--repeats224", type=int, help="repeats at 224×224 (CPU 3, GPU 7)")
    args = parser.parse_args()
    device = torch.device(args.device)
    sizes = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    for key, default in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    torch.manual_seed(0)
    if device.type == "cpu":
        torch.set_num_threads(int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    for name in args.cases.split(","):
        if name == "autoattack":  # gate-grade presets against AutoAttack: its own script
            from benchmarks import autoattack

            autoattack.main()
            continue
        if name not in CASES:
            parser.error(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        label, eps = CASES[name]
        model, x, y, steps, repeats = case_inputs(name, args, device)
        bench(label, model, x, y, eps, steps, repeats, device, not args.no_art)


if __name__ == "__main__":
    main()
