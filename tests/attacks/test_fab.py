"""FAB-T: its projections against their closed forms and the paper's code (torchattacks), the
ball and the box, early stopping, and the attack against torchattacks' FAB (AutoAttack's FAB-T
settings, skipped when torchattacks is absent)."""

import pytest
import torch

from monitor.attacks import AttackStats, fab_targeted
from monitor.attacks.fab import project_l2, project_linf
from tests.conftest import torchattacks_or_skip


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _planes(
    n: int, d: int, seed: int, spread: float = 3.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points in [0, 1] (a third of the coordinates at 0, as on digits), normals with zeros,
    offsets at random distances from the points."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, d, generator=g)
    t[t < 0.3] = 0.0
    w = torch.randn(n, d, generator=g)
    w[torch.rand(n, d, generator=g) < 0.2] = 0.0
    b = (w * t).sum(1) + spread * torch.randn(n, generator=g)
    return t, w, b


def test_the_l2_projection_is_the_closed_form_where_the_box_does_not_bind():
    t = torch.full((2, 4), 0.5)
    w = torch.tensor([[1.0, 2.0, 0.0, -2.0], [0.5, 0.5, 0.5, 0.5]])
    b = torch.tensor([0.3, 1.1])  # w·t = -0.5 and 1.0
    # without the box: d = (b - w·t) w / |w|², inside [0, 1] here
    closed = (b - (w * t).sum(1))[:, None] * w / (w * w).sum(1, keepdim=True)
    assert torch.allclose(project_l2(t, w, b), closed, atol=1e-6)


def test_the_linf_projection_is_the_closed_form_where_the_box_does_not_bind():
    t = torch.full((2, 3), 0.5)
    w = torch.tensor([[1.0, -2.0, 0.0], [1.0, 1.0, 1.0]])
    b = torch.tensor([-0.2, 1.2])  # w·t = -0.5 and 1.5
    # without the box: d = λ·sign(w) with λ = (b - w·t) / |w|₁
    closed = ((b - (w * t).sum(1)) / w.abs().sum(1))[:, None] * w.sign()
    assert torch.allclose(project_linf(t, w, b), closed, atol=1e-6)


@pytest.mark.parametrize("project", [project_linf, project_l2])
def test_projections_land_on_the_plane_inside_the_box_or_at_the_nearest_corner(project):
    t, w, b = _planes(300, 64, seed=1, spread=20.0)
    d = project(t, w, b)
    z = t + d
    assert float(z.min()) >= -1e-6 and float(z.max()) <= 1 + 1e-6
    # w·z over the box runs from low to high: on the plane where it reaches it, else at the
    # extreme nearest to it (the corner)
    low, high = w.clamp(max=0).sum(1), w.clamp(min=0).sum(1)
    reachable = (b >= low) & (b <= high)
    assert 0.5 < float(reachable.float().mean()) < 1.0  # the test covers both cases
    assert float(((w * z).sum(1) - torch.maximum(torch.minimum(b, high), low)).abs().max()) < 1e-3


_SIZES = {"projection_linf": lambda m: m.abs().amax(1), "projection_l2": lambda m: m.norm(dim=1)}


@pytest.mark.parametrize("name", ["projection_linf", "projection_l2"])
@pytest.mark.parametrize("d", [5, 64, 784])
def test_projections_match_the_papers_code(name, d):
    torchattacks = torchattacks_or_skip()
    theirs = getattr(torchattacks.attacks.fab, name)
    ours = {"projection_linf": project_linf, "projection_l2": project_l2}[name]
    for seed in range(5):
        t, w, b = _planes(200, d, seed, spread=0.2 * d**0.5 * (seed + 1))
        mine, reference = ours(t, w, b), theirs(t, w, b)
        size = {
            "projection_linf": lambda m: m.abs().amax(1),
            "projection_l2": lambda m: m.norm(dim=1),
        }[name]
        # the same move (up to float rounding), never a longer one
        assert float((mine - reference).abs().max()) < 1e-3
        assert bool((size(mine) <= size(reference) + 1e-4).all())


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_fab_stays_in_the_ball_and_the_box_and_stops_once_inside(trained_cnn, digits, norm, eps):
    x, y = digits.x[:100], digits.y[:100]
    adv = fab_targeted(trained_cnn, x, y, eps, norm=norm, steps=20, target_classes=3)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    with torch.no_grad():
        fooled = (trained_cnn(adv).argmax(1) != y) & (trained_cnn(x).argmax(1) == y)
    assert float(fooled.float().mean()) > 0.3
    # a sample stops costing passes once it has an example inside the ball: the fooled ones
    # again spend a few steps of their first target, not 3 targets of 20 steps
    stats = AttackStats()
    fab_targeted(trained_cnn, x[fooled], y[fooled], eps, norm=norm, steps=20, target_classes=3,
                 stats=stats)  # fmt: skip
    assert stats.backward < int(fooled.sum()) * 20 * 0.5


def test_fab_is_deterministic_and_batch_independent(trained_cnn, digits):
    x, y = digits.x[:60], digits.y[:60]
    whole = fab_targeted(trained_cnn, x, y, 0.1, steps=10, target_classes=2)
    parts = torch.cat([fab_targeted(trained_cnn, x[i : i + 20], y[i : i + 20], 0.1, steps=10,
                                    target_classes=2) for i in (0, 20, 40)])  # fmt: skip
    assert torch.allclose(whole, parts, atol=1e-5)
    with pytest.raises(ValueError, match="norm"):
        fab_targeted(trained_cnn, x, y, 0.1, norm="l1")


@pytest.mark.parametrize(("norm", "eps", "n"), [("linf", 0.1, 300), ("l2", 0.5, 300)])
def test_fab_breaks_what_torchattacks_fab_breaks(trained_cnn, digits, norm, eps, n):
    torchattacks = torchattacks_or_skip()
    x, y = digits.x[:n], digits.y[:n]
    reference = torchattacks.FAB(trained_cnn, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps,
                                 steps=20, multi_targeted=True, n_classes=10, seed=0)  # fmt: skip
    with torch.no_grad():
        theirs = trained_cnn(reference(x, y)).argmax(1) == y
        ours = trained_cnn(fab_targeted(trained_cnn, x, y, eps, norm=norm, steps=20)).argmax(1) == y
    assert float(ours.float().mean()) <= float(theirs.float().mean()) + 0.01
    assert int((ours != theirs).sum()) <= 0.02 * n  # the same algorithm, sample by sample
    assert float(ours.float().mean()) < _accuracy(trained_cnn, x, y) - 0.2  # it attacks at all
