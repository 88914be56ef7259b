"""APGD-T and the DLR loss: the closed form, the ball, seeds, and strength against AutoAttack's
reference implementation (torchattacks, skipped when absent)."""

import pytest
import torch
from torch import nn

from monitor.architectures import digits_cnn
from monitor.attacks import AttackStats, apgd, apgd_targeted, dlr_loss, pgd
from monitor.datasets import load_dataset
from monitor.training import train_classifier
from tests.conftest import torchattacks_or_skip


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_dlr_loss_matches_its_closed_form_on_hand_made_logits():
    logits = torch.tensor([[4.0, 1.0, 3.0, 0.0, -2.0], [1.0, 5.0, 2.0, 2.5, 0.0]])
    y = torch.tensor([0, 2])  # the first is classified correctly, the second is not
    # sorted: [4, 3, 1, 0, -2] and [5, 2.5, 2, 1, 0]
    untargeted = torch.tensor([-(4 - 3) / (4 - 1), -(2 - 5) / (5 - 2)])
    assert torch.allclose(dlr_loss(logits, y), untargeted)
    target = torch.tensor([2, 3])
    towards = torch.tensor([-(4 - 3) / (4 - (1 + 0) / 2), -(2 - 2.5) / (5 - (2 + 1) / 2)])
    assert torch.allclose(dlr_loss(logits, y, target), towards)
    # a shift and a positive scale of the logits change nothing (unlike cross-entropy)
    assert torch.allclose(dlr_loss(7.0 * logits - 3.0, y, target), towards)


def test_dlr_loss_falls_back_to_cross_entropy_without_enough_classes():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    y, target = torch.tensor([0, 1]), torch.tensor([1, 2])
    ce = nn.functional.cross_entropy
    assert torch.allclose(dlr_loss(logits, y, target), -ce(logits, target, reduction="none"))
    two = logits[:, :2]
    assert torch.allclose(dlr_loss(two, y), ce(two, y, reduction="none"))
    assert torch.allclose(dlr_loss(logits, y), torch.tensor([-(2 - 0.5) / 3, -(1 - 3) / 3]))


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_apgd_targeted_stays_in_the_ball_and_in_the_unit_box(trained_cnn, digits, norm, eps):
    x, y = digits.x[:120], digits.y[:120]
    adv = apgd_targeted(trained_cnn, x, y, eps, norm=norm, steps=10, target_classes=3, seed=0)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert _accuracy(trained_cnn, adv, y) < _accuracy(trained_cnn, x, y) - 0.2  # it attacks


def test_apgd_targeted_is_reproducible_and_batch_independent_with_per_sample_seeds(
    trained_cnn, digits
):
    x, y = digits.x[:64], digits.y[:64]
    kwargs = {"steps": 10, "target_classes": 3}
    first = apgd_targeted(trained_cnn, x, y, 0.1, seed=5, **kwargs)
    assert torch.equal(first, apgd_targeted(trained_cnn, x, y, 0.1, seed=5, **kwargs))
    seeds = list(range(100, 164))
    whole = apgd_targeted(trained_cnn, x, y, 0.1, seed=seeds, **kwargs)
    halves = torch.cat(
        [
            apgd_targeted(trained_cnn, x[:20], y[:20], 0.1, seed=seeds[:20], **kwargs),
            apgd_targeted(trained_cnn, x[20:], y[20:], 0.1, seed=seeds[20:], **kwargs),
        ]
    )
    assert torch.allclose(whole, halves, atol=1e-6)
    other = apgd_targeted(trained_cnn, x, y, 0.1, seed=list(range(64)), **kwargs)
    assert not torch.equal(whole, other)  # the seeds are used


def test_apgd_targeted_spends_passes_only_on_samples_still_classified_correctly(
    trained_cnn, digits
):
    x, y = digits.x[:100], digits.y[:100]
    stats = AttackStats()
    apgd_targeted(trained_cnn, x, y, 0.2, steps=20, seed=0, stats=stats)
    assert stats.forward < 100 * (1 + 9 * 21) * 0.2  # most fall to the first target, early


class _ThreeClasses(nn.Module):
    """A linear model on 8×8 images with three classes (too few for the targeted DLR)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(64, 3)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_target_classes_are_validated_and_clipped_to_the_other_classes():
    model = _ThreeClasses()
    x = torch.rand(30, 1, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)
    stats = AttackStats()
    adv = apgd_targeted(model, x, y, 0.5, steps=5, target_classes=9, seed=0, stats=stats)
    assert stats.forward <= 30 * (1 + 2 * 6)  # two targets: the classes there are
    assert _accuracy(model, adv, y) < 1.0
    with pytest.raises(ValueError, match="target_classes"):
        apgd_targeted(model, x, y, 0.1, target_classes=0)
    with pytest.raises(ValueError, match="apgd_targeted"):
        apgd(model, x, y, 0.1, loss="dlr", targeted=True)
    with pytest.raises(ValueError, match="loss"):
        apgd(model, x, y, 0.1, loss="hinge")


class _Scaled(nn.Module):
    """Logits times 1e4: softmax saturates in float32, so the cross-entropy gradient is zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return 1e4 * self.model(x)


def test_dlr_sees_through_a_logit_scale_that_zeroes_the_cross_entropy_gradient(trained_cnn, digits):
    model, x, y = _Scaled(trained_cnn), digits.x[:150], digits.y[:150]
    ce = _accuracy(model, apgd(model, x, y, 0.1, steps=20, seed=0), y)
    dlr = _accuracy(model, apgd(model, x, y, 0.1, steps=20, loss="dlr", seed=0), y)
    targeted = _accuracy(model, apgd_targeted(model, x, y, 0.1, steps=20, seed=0), y)
    assert dlr < ce - 0.2 and targeted < ce - 0.2


@pytest.fixture(scope="module")
def robust_cnn():
    """The demo CNN trained with FGSM and a random start (Wong et al. 2020) at L∞ 0.1 on the
    digits train split, 10 epochs (a few seconds on one thread)."""
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = digits_cnn()

    def fgsm_rs(m, xb, yb):
        return pgd(m, xb, yb, 0.1, steps=1, step_size=0.125, early_stop=False, seed=0)

    train_classifier(model, train.x, train.y, epochs=10, lr=2e-3, seed=0, transform=fgsm_rs)
    return model.eval()


# (model fixture, norm, eps, samples): radii where about half the test samples stay robust, so
# that a weaker attack shows (the robust model keeps most samples through all 9 targets: fewer)
CASES = [
    ("trained_cnn", "linf", 0.1, 540),
    ("trained_cnn", "l2", 0.5, 540),
    ("robust_cnn", "linf", 0.1, 270),
    ("robust_cnn", "l2", 0.5, 270),
]


@pytest.mark.parametrize(("model_name", "norm", "eps", "n"), CASES)
def test_apgd_targeted_is_at_least_as_strong_as_autoattacks(
    request, digits, model_name, norm, eps, n
):
    torchattacks = torchattacks_or_skip()
    model, x, y = request.getfixturevalue(model_name), digits.x[:n], digits.y[:n]
    reference = torchattacks.APGDT(
        model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=20, n_restarts=1, seed=0
    )
    theirs = _accuracy(model, reference(x, y), y)
    ours = _accuracy(model, apgd_targeted(model, x, y, eps, norm=norm, steps=20, seed=0), y)
    assert ours <= theirs + 0.01
    assert ours < _accuracy(model, x, y) - 0.2  # it attacks at all


@pytest.mark.parametrize(("model_name", "norm", "eps", "n"), CASES)
def test_apgd_dlr_is_at_least_as_strong_as_autoattacks(request, digits, model_name, norm, eps, n):
    torchattacks = torchattacks_or_skip()
    model, x, y = request.getfixturevalue(model_name), digits.x[:n], digits.y[:n]
    reference = torchattacks.APGD(
        model, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, steps=20, seed=0, loss="dlr"
    )
    theirs = _accuracy(model, reference(x, y), y)
    ours = _accuracy(model, apgd(model, x, y, eps, norm=norm, steps=20, loss="dlr", seed=0), y)
    assert ours <= theirs + 0.01
