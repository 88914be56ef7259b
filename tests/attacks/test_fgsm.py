import pytest
import torch
from torch import nn

from monitor.attacks import fgsm


def test_fgsm_equals_the_closed_form_on_a_linear_softmax_model() -> None:
    torch.manual_seed(1)
    linear = nn.Linear(48, 5)
    model = nn.Sequential(nn.Flatten(), linear)
    x = torch.rand(64, 3, 4, 4)
    y = torch.randint(0, 5, (64,))
    eps = 0.07
    # d CE / dx = W^T (softmax(Wx + b) - onehot(y)), per sample
    with torch.no_grad():
        p = torch.softmax(x.flatten(1) @ linear.weight.T + linear.bias, dim=1)
        grad = (p - nn.functional.one_hot(y, 5).float()) @ linear.weight
        expected = (x + eps * grad.sign().view_as(x)).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, eps), expected)
    # targeted: descend the loss towards the target
    with torch.no_grad():
        toward = (x - eps * grad.sign().view_as(x)).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, eps, targeted=True), toward)


def test_fgsm_l2_is_one_normalised_gradient_step() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.full((8, 1, 4, 4), 0.5)
    y = torch.randint(0, 3, (8,))
    x_adv = fgsm(model, x, y, 0.3, norm="l2")
    norms = (x_adv - x).flatten(1).norm(dim=1)
    assert torch.allclose(norms, torch.full((8,), 0.3), atol=1e-5)


def test_fgsm_on_the_demo_cnn_stays_in_bounds(trained_cnn, digits) -> None:
    x, y = digits.x[:200], digits.y[:200]
    x_adv = fgsm(trained_cnn, x, y, 0.1)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert (trained_cnn(x_adv).argmax(1) == y).float().mean() < 0.75


@pytest.mark.parametrize("bad", [{"eps": -0.1}, {"y": torch.zeros(3, dtype=torch.long)}])
def test_programmer_errors_are_value_errors(trained_cnn, digits, bad) -> None:
    args = {"x": digits.x[:5], "y": digits.y[:5], "eps": 0.1} | bad
    with pytest.raises(ValueError):
        fgsm(trained_cnn, **args)
