"""Our attacks against the Adversarial Robustness Toolbox (skipped when ART is absent)."""

import numpy as np
import pytest
import torch

from monitor.attacks import apgd, fgsm, pgd

art = pytest.importorskip("art")


def _art_classifier(model):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(torch.as_tensor(x)).argmax(1) == y).float().mean())


def test_fgsm_matches_art_exactly(trained_cnn, digits) -> None:
    from art.attacks.evasion import FastGradientMethod

    x, y = digits.x, digits.y
    theirs = FastGradientMethod(_art_classifier(trained_cnn), eps=0.1, norm=np.inf).generate(
        x.numpy(), y=y.numpy()
    )
    ours = fgsm(trained_cnn, x, y, 0.1).numpy()
    assert np.abs(ours - theirs).max() < 1e-6
    assert _accuracy(trained_cnn, ours, y) == _accuracy(trained_cnn, theirs, y)


@pytest.mark.parametrize(("norm", "eps", "art_norm"), [("linf", 0.1, np.inf), ("l2", 1.0, 2)])
def test_pgd_is_at_least_as_strong_as_art(trained_cnn, digits, norm, eps, art_norm) -> None:
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = digits.x, digits.y
    attack = ProjectedGradientDescent(
        _art_classifier(trained_cnn),
        norm=art_norm,
        eps=eps,
        eps_step=2.5 * eps / 20,
        max_iter=20,
        num_random_init=1,
        verbose=False,
    )
    np.random.seed(0)
    theirs = _accuracy(trained_cnn, attack.generate(x.numpy(), y=y.numpy()), y)
    ours = _accuracy(trained_cnn, pgd(trained_cnn, x, y, eps, norm=norm, steps=20, seed=0), y)
    assert ours <= theirs + 0.02


@pytest.mark.parametrize(("norm", "eps", "art_norm"), [("linf", 0.1, np.inf), ("l2", 1.0, 2)])
def test_apgd_is_at_least_as_strong_as_arts_auto_pgd(
    trained_cnn, digits, norm, eps, art_norm
) -> None:
    from art.attacks.evasion import AutoProjectedGradientDescent

    x, y = digits.x, digits.y
    attack = AutoProjectedGradientDescent(
        _art_classifier(trained_cnn),
        norm=art_norm,
        eps=eps,
        eps_step=2 * eps,
        max_iter=50,
        nb_random_init=1,
        loss_type="cross_entropy",
        verbose=False,
    )
    np.random.seed(0)
    theirs = _accuracy(trained_cnn, attack.generate(x.numpy(), y=y.numpy()), y)
    ours = _accuracy(trained_cnn, apgd(trained_cnn, x, y, eps, norm=norm, steps=50, seed=0), y)
    assert ours <= theirs + 0.02
