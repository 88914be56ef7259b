"""Adversarial attacks on differentiable classifiers: pure functions on tensors, no I/O.

``fgsm(model, x, y, eps)``, ``pgd(model, x, y, eps, norm=..., steps=...)``, ``apgd`` (same
arguments as pgd, plus ``loss="ce" | "dlr"``) and ``apgd_targeted`` (AutoAttack's APGD-T) take
pixel-space inputs in [0, 1] (N×C×H×W) and a model returning logits, on whatever device the
model is on. ``dlr_loss`` is the DLR loss they ascend.
``fab_targeted`` is AutoAttack's FAB-T (minimal-distortion, deterministic) at a radius.
``square(scores, x, y, eps, norm=..., queries=...)`` needs only scores (logits or
log-probabilities) from any callable: a black-box attack on a query budget.
Importing this package needs only torch.
"""

from monitor.attacks.apgd import apgd, apgd_targeted
from monitor.attacks.core import NORMS, AttackStats, dlr_loss, perturbation_size
from monitor.attacks.fab import fab_targeted
from monitor.attacks.fgsm import fgsm
from monitor.attacks.pgd import pgd
from monitor.attacks.square import square

__all__ = [
    "NORMS",
    "AttackStats",
    "apgd",
    "apgd_targeted",
    "dlr_loss",
    "fab_targeted",
    "fgsm",
    "perturbation_size",
    "pgd",
    "square",
]
