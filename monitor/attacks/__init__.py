"""Adversarial attacks on differentiable classifiers: pure functions on tensors, no I/O.

``fgsm(model, x, y, eps)``, ``pgd(model, x, y, eps, norm=..., steps=...)`` and ``apgd`` (same
arguments as pgd) take pixel-space
inputs in [0, 1] (N×C×H×W) and a model returning logits, on whatever device the model is on.
Importing this package needs only torch.
"""

from monitor.attacks.apgd import apgd
from monitor.attacks.core import NORMS, AttackStats, perturbation_size
from monitor.attacks.fgsm import fgsm
from monitor.attacks.pgd import pgd

__all__ = ["NORMS", "AttackStats", "apgd", "fgsm", "perturbation_size", "pgd"]
