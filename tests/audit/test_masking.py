"""A model with a gradient-masking layer (input rounding) must not look robust unchallenged."""

import torch

from monitor.architectures import InputRounding
from monitor.audit.checks import WARNING, run_checks
from monitor.audit.config import AuditConfig
from monitor.audit.measure import Attackers, measure
from monitor.classifiers import TorchClassifier


def test_input_rounding_raises_credibility_warnings(trained_cnn, digits) -> None:
    masked = InputRounding(trained_cnn, levels=4).eval()
    config = AuditConfig(dataset="digits", eps=(0.05, 0.1), limit=200)
    m = measure(
        Attackers(TorchClassifier("masked", masked)), digits.x[:200], digits.y[:200], config
    )
    pgd_01 = next(c for c in m.cells if c.attack == "pgd" and c.eps == 0.1)
    assert pgd_01.robust_accuracy > 0.6  # looks robust: gradients are zero almost everywhere
    warnings = {c.name for c in run_checks(m) if c.status == WARNING}
    assert "zero_gradients" in warnings
    assert "large_eps_accuracy" in warnings


def test_the_same_model_unmasked_raises_none(trained_cnn, digits) -> None:
    config = AuditConfig(dataset="digits", eps=(0.05, 0.1), limit=200)
    m = measure(
        Attackers(TorchClassifier("plain", trained_cnn)), digits.x[:200], digits.y[:200], config
    )
    assert [c.name for c in run_checks(m) if c.status == WARNING] == []
    assert torch.is_tensor(digits.x)
