"""APGD-CE: inside the ball, at least as strong as PGD, deterministic with a seed; EOT in the
shared input gradient."""

import pytest
import torch
from torch import nn

from monitor.attacks import AttackStats, apgd, pgd
from monitor.attacks.core import input_gradient


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("linf", 0.1), ("l2", 0.5), ("l2", 1.0)])
def test_apgd_stays_in_the_ball_and_beats_pgd_at_equal_steps(trained_cnn, digits, norm, eps):
    x, y = digits.x, digits.y
    adv = apgd(trained_cnn, x, y, eps, norm=norm, steps=20, seed=0)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    ours = _accuracy(trained_cnn, adv, y)
    plain = _accuracy(trained_cnn, pgd(trained_cnn, x, y, eps, norm=norm, steps=20, seed=0), y)
    assert ours <= plain + 0.005
    assert ours < _accuracy(trained_cnn, x, y) - 0.05  # it attacks at all


def test_apgd_is_reproducible_and_spends_passes_only_on_unfooled_samples(trained_cnn, digits):
    x, y = digits.x[:200], digits.y[:200]
    stats = AttackStats()
    first = apgd(trained_cnn, x, y, 0.2, steps=20, seed=3, stats=stats)
    assert torch.equal(first, apgd(trained_cnn, x, y, 0.2, steps=20, seed=3))
    assert stats.forward < 200 * 21 * 0.5  # most are fooled early at eps 0.2


class _Noisy(nn.Module):
    """A linear model behind additive noise: its expected gradient is known."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x.flatten(1) + 0.5 * torch.randn_like(x.flatten(1)))


def test_eot_averages_the_gradient_over_draws():
    torch.manual_seed(0)
    model = _Noisy()
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 2])
    model.eot_samples = 1
    single = torch.stack([input_gradient(model, x, y, False)[0] for _ in range(400)]).mean(0)
    model.eot_samples = 400
    stats = AttackStats()
    averaged, logits = input_gradient(model, x, y, False, stats)
    assert stats.forward == 800 and logits.shape == (2, 3)
    assert torch.allclose(averaged, single, atol=0.03)
    model.eot_samples = 1
    assert not torch.allclose(input_gradient(model, x, y, False)[0], averaged, atol=0.01)
