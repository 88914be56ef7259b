"""Credibility checks on ordinary models and on models that should warn, in one table.

    OMP_NUM_THREADS=1 python benchmarks/checks.py [--test 300] [--resnet] [--only NAME ...]

Every model is trained here, small and on CPU (3 CPU minutes, one thread). Ordinary models
— plain CNNs on ``digits`` (8×8) with 300 and all 1,257 training images, three seeds and a
long-trained one, a wide CNN, CNNs on ``digits28`` (300 and all images, 8 and 30 epochs, and
on near-binary bold strokes like MNIST's), a colour CNN on 32×32 colour digit photos
(``--resnet`` adds a briefly trained ResNet-18: 10 minutes on CPU) — must pass every check.
Bad models must each raise at least one warning: input rounding (a gradient-masking layer),
FGSM-only adversarial training on ``digits28`` without a random
start at eps 0.3 (catastrophic overfitting; two seeds), a bit-depth and a JPEG defence attacked
without BPDA (``adaptive=False``), and a model that expects 0–255 pixels fed [0, 1] (a wrong
input contract: near chance).

Each model is audited by ``monitor.audit.measure`` (FGSM and PGD-10, L∞, the default grid for
its input kind given explicitly: grayscale 0.1 / 0.2 / 0.3, colour 2/255 / 4/255 / 8/255) on the
first ``--test`` test images. Printed per model: clean accuracy, each check's status (``.``
passed, ``W`` warning, ``-`` skipped), the FGSM and PGD numbers behind ``fgsm_far_above_pgd``
at the eps where FGSM falls furthest short of PGD, and whether the row is as it should be.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._colour_data import digit_photos
from benchmarks._timing import table
from monitor import architectures
from monitor.attacks import fgsm
from monitor.audit.checks import CHECKS, WARNING, run_checks
from monitor.audit.config import AuditConfig
from monitor.audit.measure import Attackers, Measurements, measure
from monitor.classifiers import TorchClassifier
from monitor.datasets import load_dataset
from monitor.harden.transforms import BitDepth, DefendedModel, Jpeg
from monitor.training import train_classifier

GREY_EPS = (0.1, 0.2, 0.3)
COLOUR_EPS = (2 / 255, 4 / 255, 8 / 255)
STATUS_MARK = {"passed": ".", "warning": "W", "skipped": "-"}


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    eps: tuple[float, ...]


@dataclass(frozen=True)
class Case:
    """One model to audit: how to build it, whether it should warn, and how it is attacked."""

    name: str
    should_warn: bool
    data: str  # key of the datasets below
    build: Callable[[Data], nn.Module]
    adaptive: bool = True


def builtin(name: str, n_test: int) -> Data:
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    return Data(train.x, train.y, test.x[:n_test], test.y[:n_test], GREY_EPS)


def bold(data: Data) -> Data:
    """Digits with sharp strokes, nearly binary like MNIST's: plain models on them show the
    largest FGSM-PGD gaps (PGD's curvature advantage grows as inputs saturate)."""
    sharpen = lambda x: ((x - 0.4) * 6).clamp(0, 1)  # noqa: E731
    return Data(sharpen(data.x_train), data.y_train, sharpen(data.x_test), data.y_test, data.eps)


def colour(n_test: int) -> Data:
    x_train, y_train = digit_photos(3000, 32, seed=0, split="train")
    x_test, y_test = digit_photos(n_test, 32, seed=1, split="test")
    as_float = lambda a: torch.from_numpy(a).float() / 255  # noqa: E731
    return Data(
        as_float(x_train),
        torch.from_numpy(y_train),
        as_float(x_test),
        torch.from_numpy(y_test),
        COLOUR_EPS,
    )


def plain(arch: str, n_train: int | None, seed: int, epochs: int, lr: float = 2e-3):
    """An ordinarily trained model: Adam on clean images (the first ``n_train`` of them)."""

    def build(d: Data) -> nn.Module:
        torch.manual_seed(seed)
        model = architectures.ARCHITECTURES[arch]()
        x, y = d.x_train[:n_train], d.y_train[:n_train]
        train_classifier(model, x, y, epochs=epochs, lr=lr, seed=seed)
        return model.eval()

    return build


def fgsm_only(eps: float, epochs: int, seed: int):
    """FGSM adversarial training without a random start, half of each batch adversarial: by the
    last epochs FGSM barely moves the model while PGD breaks it (catastrophic overfitting)."""

    def build(d: Data) -> nn.Module:
        torch.manual_seed(seed)
        model = architectures.cnn28()
        step = lambda m, x, y: fgsm(m, x, y, eps)  # noqa: E731
        train_classifier(
            model, d.x_train, d.y_train, epochs=epochs, lr=1e-3, seed=seed, transform=step
        )
        return model.eval()

    return build


def rounded(d: Data) -> nn.Module:
    return architectures.InputRounding(plain("digits-cnn", None, 0, 15)(d), levels=4).eval()


def defended(transform: Callable[[], nn.Module]):
    def build(d: Data) -> nn.Module:
        base = plain("digits-cnn", None, 0, 15)(d)
        return DefendedModel(base, [transform()], tuple(d.x_test.shape[1:])).eval()

    return build


def expects_uint8(d: Data) -> nn.Module:
    """Trained on 0–255 pixels, audited on [0, 1]: an input contract nobody declared."""
    torch.manual_seed(0)
    model = architectures.digits_cnn()
    model[0] = architectures.Standardize(127.5, 127.5)
    train_classifier(model, d.x_train * 255, d.y_train, epochs=15, lr=2e-3, seed=0)
    return model.eval()


CASES = [
    *[
        Case(f"digits cnn n=300 seed={s}", False, "digits", plain("digits-cnn", 300, s, 40))
        for s in (0, 1, 2)
    ],
    *[
        Case(f"digits cnn n=all seed={s}", False, "digits", plain("digits-cnn", None, s, 15))
        for s in (0, 1, 2)
    ],
    Case("digits cnn n=all 100 epochs", False, "digits", plain("digits-cnn", None, 0, 100)),
    Case("digits wide cnn n=all", False, "digits", plain("digits-cnn-wide", None, 0, 15)),
    Case("digits28 cnn n=300", False, "digits28", plain("cnn28", 300, 0, 20)),
    Case("digits28 cnn n=all", False, "digits28", plain("cnn28", None, 0, 8)),
    Case("digits28 cnn n=all 30 epochs", False, "digits28", plain("cnn28", None, 1, 30)),
    Case("bold digits28 cnn 30 epochs", False, "bold28", plain("cnn28", None, 1, 30, 1e-3)),
    Case("colour 32x32 cnn", False, "colour", plain("small-cnn-rgb", None, 0, 15)),
    Case("input rounding (4 levels)", True, "digits", rounded),
    *[
        Case(f"digits28 FGSM-only eps 0.3 seed={s}", True, "digits28", fgsm_only(0.3, 10, s))
        for s in (0, 1)
    ],
    Case("bits:4 attacked naively", True, "digits", defended(lambda: BitDepth(4)), False),
    Case("jpeg:75 attacked naively", True, "digits", defended(lambda: Jpeg(75)), False),
    Case("expects 0-255, fed [0, 1]", True, "digits", expects_uint8),
]
RESNET = Case("colour 32x32 resnet-18", False, "colour", plain("resnet18", 1000, 0, 3, 1e-3))


def audit(case: Case, d: Data, model: nn.Module) -> Measurements:
    config = AuditConfig(dataset=case.data, eps=d.eps, adaptive=case.adaptive)
    return measure(Attackers(TorchClassifier(case.name, model)), d.x_test, d.y_test, config)


def fgsm_pgd_numbers(m: Measurements) -> str:
    """FGSM and PGD robust accuracy where FGSM falls furthest short of PGD, and how many inputs
    FGSM fools there per input PGD fools."""
    cells = {(c.attack, c.eps): c.robust_accuracy for c in m.cells if c.threat == "white-box"}
    eps = sorted({e for a, e in cells if a == "fgsm" and ("pgd", e) in cells})
    if not eps:
        return "-"
    e = max(eps, key=lambda e: cells[("fgsm", e)] - cells[("pgd", e)])
    f, p, clean = cells[("fgsm", e)], cells[("pgd", e)], m.clean_accuracy
    share = (clean - f) / (clean - p) if clean > p else 1.0
    return f"{f:.2f}/{p:.2f}@{e:.3g} fools {share:.0%}"


def row(case: Case, m: Measurements, seconds: float) -> tuple:
    checks = run_checks(m)
    warned = [c.name for c in checks if c.status == WARNING]
    right = bool(warned) == case.should_warn
    return (
        case.name,
        "bad" if case.should_warn else "ordinary",
        f"{m.clean_accuracy:.3f}",
        "".join(STATUS_MARK[c.status] for c in checks),
        fgsm_pgd_numbers(m),
        "ok" if right else "WRONG",
        ", ".join(warned) or "-",
        f"{seconds:.0f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--test", type=int, default=300, help="test images per audit")
    parser.add_argument("--resnet", action="store_true", help="add a ResNet-18 (slow on CPU)")
    parser.add_argument("--only", nargs="*", help="cases whose name contains one of these")
    args = parser.parse_args()
    cases = [*CASES, RESNET] if args.resnet else CASES
    if args.only:
        cases = [c for c in cases if any(s in c.name for s in args.only)]
    loaders = {
        "digits": lambda: builtin("digits", args.test),
        "digits28": lambda: builtin("digits28", args.test),
        "bold28": lambda: bold(builtin("digits28", args.test)),
        "colour": lambda: colour(args.test),
    }
    data: dict[str, Data] = {}
    rows = []
    for case in cases:
        started = time.perf_counter()
        if case.data not in data:
            data[case.data] = loaders[case.data]()
        d = data[case.data]
        m = audit(case, d, case.build(d))
        rows.append(row(case, m, time.perf_counter() - started))
        print(rows[-1], file=sys.stderr, flush=True)
    legend = " ".join(f"{i + 1}={check.__name__}" for i, check in enumerate(CHECKS))
    print(f"checks in order: {legend}\n")
    header = (
        "model",
        "kind",
        "clean",
        "checks",
        "fgsm/pgd@eps, fgsm fools (share of pgd)",
        "as it should",
        "warnings",
        "s",
    )
    print(table(rows, header))


if __name__ == "__main__":
    main()
