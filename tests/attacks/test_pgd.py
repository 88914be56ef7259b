import copy

import pytest
import torch
from torch import nn

from monitor.architectures import digits_cnn
from monitor.attacks import AttackStats, fgsm, pgd


def robust(model, x_adv, y) -> float:
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_results_stay_in_the_ball_and_in_unit_range(trained_cnn, digits, norm, eps) -> None:
    x, y = digits.x[:256], digits.y[:256]
    x_adv = pgd(trained_cnn, x, y, eps, norm=norm, steps=15, seed=0)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert robust(trained_cnn, x_adv, y) < robust(trained_cnn, x, y) - 0.2


def test_fixed_seed_gives_identical_results(trained_cnn, digits) -> None:
    x, y = digits.x[:128], digits.y[:128]
    a = pgd(trained_cnn, x, y, 0.1, seed=7)
    b = pgd(trained_cnn, x, y, 0.1, seed=7)
    c = pgd(trained_cnn, x, y, 0.1, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pgd_is_at_least_as_strong_as_fgsm_on_the_demo_cnn(trained_cnn, digits) -> None:
    x, y = digits.x, digits.y
    for eps in (0.05, 0.1, 0.2):
        assert robust(trained_cnn, pgd(trained_cnn, x, y, eps, steps=20, seed=0), y) <= robust(
            trained_cnn, fgsm(trained_cnn, x, y, eps), y
        )


def test_early_stop_same_robust_accuracy_fewer_passes(trained_cnn, digits, forward_counter):
    x, y = digits.x, digits.y
    counter = forward_counter(trained_cnn)
    full = pgd(trained_cnn, x, y, 0.1, steps=20, seed=3, early_stop=False)
    full_passes = counter.samples
    counter.samples = 0
    stopped = pgd(trained_cnn, x, y, 0.1, steps=20, seed=3, early_stop=True)
    stopped_passes = counter.samples
    assert full_passes == 20 * len(x)  # exactly k forward passes without early stop
    assert robust(trained_cnn, stopped, y) == robust(trained_cnn, full, y)
    assert stopped_passes < 0.8 * full_passes
    # samples fooled early keep their first successful example: still misclassified
    fooled = trained_cnn(stopped).argmax(1) != y
    assert fooled.float().mean() > 0.4


def test_targeted_attack_reaches_its_targets(trained_cnn, digits) -> None:
    x, y = digits.x[:200], digits.y[:200]
    target = (y + 1) % 10
    x_adv = pgd(trained_cnn, x, target, 0.3, steps=40, targeted=True, seed=0)
    with torch.no_grad():
        reached = (trained_cnn(x_adv).argmax(1) == target).float().mean()
    assert reached > 0.9


def test_restarts_keep_the_strongest_result_per_sample(trained_cnn, digits) -> None:
    x, y = digits.x, digits.y
    one = robust(trained_cnn, pgd(trained_cnn, x, y, 0.1, steps=5, seed=0), y)
    stats = AttackStats()
    many = pgd(trained_cnn, x, y, 0.1, steps=5, restarts=4, seed=0, stats=stats)
    assert robust(trained_cnn, many, y) <= one
    # later restarts only run on samples not yet fooled
    assert stats.forward < 4 * 6 * len(x)


def test_restarts_without_early_stop_are_no_weaker(trained_cnn, digits) -> None:
    x, y = digits.x, digits.y
    one = robust(trained_cnn, pgd(trained_cnn, x, y, 0.1, steps=5, seed=0, early_stop=False), y)
    many = pgd(trained_cnn, x, y, 0.1, steps=5, restarts=3, seed=0, early_stop=False)
    assert robust(trained_cnn, many, y) <= one


def test_mode_is_restored_and_parameters_get_no_gradient(digits) -> None:
    model = nn.Sequential(copy.deepcopy(digits_cnn()), nn.Dropout(0.5))
    model.train()
    x, y = digits.x[:32], digits.y[:32]
    seen_modes = []
    model.register_forward_hook(lambda m, i, o: seen_modes.append(m.training))
    pgd(model, x, y, 0.1, steps=3, seed=0)
    fgsm(model, x, y, 0.1)
    assert model.training is True
    assert seen_modes and not any(seen_modes)  # attacked in eval mode
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_attacks_work_under_no_grad(trained_cnn, digits) -> None:
    with torch.no_grad():
        x_adv = pgd(trained_cnn, digits.x[:16], digits.y[:16], 0.1, steps=2, seed=0)
    assert not torch.equal(x_adv, digits.x[:16])


def test_exported_pt2_graph_is_attacked_as_is(trained_cnn, digits) -> None:
    """torch.export graphs (MLflow's pt2 format) refuse .eval(); attacks must still run."""
    batch = torch.export.Dim("batch", min=1)
    exported = torch.export.export(
        trained_cnn, (digits.x[:2],), dynamic_shapes={"input": {0: batch}}
    ).module()
    with pytest.raises(NotImplementedError):
        exported.eval()
    x, y = digits.x[:64], digits.y[:64]
    ours = pgd(exported, x, y, 0.1, seed=1)
    reference = pgd(trained_cnn, x, y, 0.1, seed=1)
    assert torch.allclose(ours, reference, atol=1e-5)
