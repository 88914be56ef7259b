"""Square Attack: inside the ball, query budget and early stop, seeds, black boxes that return
probabilities, as strong as torchattacks' port of the paper's code, blind to gradient masking."""

import numpy as np
import pytest
import torch
from torch import nn

from monitor.attacks import AttackStats, pgd, square
from monitor.attacks.core import SampleStreams, draw, input_gradient
from tests.conftest import torchattacks_or_skip


def _accuracy(scores, x, y) -> float:
    with torch.no_grad():
        return float((torch.as_tensor(scores(x)).argmax(1) == y).float().mean())


class _Recorder:
    """A black box that records how many inputs each call brought."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.calls = model, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        return self.model(x)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_square_stays_in_the_ball_and_in_unit_range(trained_cnn, digits, norm, eps):
    x, y = digits.x[:150], digits.y[:150]
    adv = square(trained_cnn, x, y, eps, norm=norm, queries=300, seed=0)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert float(size.max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert _accuracy(trained_cnn, adv, y) < _accuracy(trained_cnn, x, y) - 0.3


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_queries_stay_in_budget_and_stop_once_fooled(trained_cnn, digits, norm):
    x, y = digits.x[:150], digits.y[:150]
    box, stats = _Recorder(trained_cnn), AttackStats()
    adv = square(box, x, y, 0.15 if norm == "linf" else 1.0, norm=norm, queries=200, stats=stats)
    spent = stats.queries
    assert spent.dtype == torch.int64 and spent.shape == (150,)
    assert int(spent.min()) >= 1 and int(spent.max()) <= 200
    assert stats.forward == int(spent.sum()) == sum(box.calls)
    # one batched call per step, with exactly the samples that have queries left to spend
    assert box.calls == [int((spent > t).sum()) for t in range(len(box.calls))]
    fooled = (trained_cnn(adv).argmax(1) != y).detach()
    assert bool(fooled[spent < 200].all())  # a sample stops early only once misclassified
    assert int(spent.sum()) < 150 * 200 * 0.5


def test_restarts_run_only_on_samples_not_yet_fooled(trained_cnn, digits):
    x, y = digits.x[:150], digits.y[:150]
    once, twice = AttackStats(), AttackStats()
    first = square(trained_cnn, x, y, 0.1, queries=100, seed=5, stats=once)
    second = square(trained_cnn, x, y, 0.1, queries=100, restarts=2, seed=5, stats=twice)
    fooled = (trained_cnn(first).argmax(1) != y).detach()
    assert torch.equal(second[fooled], first[fooled])  # the same first run, kept
    assert torch.equal(twice.queries[fooled], once.queries[fooled])
    assert bool((twice.queries[~fooled] > 100).all()) and int(twice.queries.max()) <= 200
    assert _accuracy(trained_cnn, second, y) < _accuracy(trained_cnn, first, y)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_seeds_reproduce_and_per_sample_seeds_ignore_the_batch(trained_cnn, digits, norm):
    x, y, eps = digits.x[:120], digits.y[:120], 0.1 if norm == "linf" else 1.0
    run = lambda xs, ys, seed: square(trained_cnn, xs, ys, eps, norm=norm, queries=150, seed=seed)  # noqa: E731
    assert torch.equal(run(x, y, 7), run(x, y, 7))
    assert not torch.equal(run(x, y, 7), run(x, y, 8))
    seeds = torch.arange(1000, 1120)
    whole = run(x, y, seeds)
    assert torch.equal(run(x[:37], y[:37], seeds[:37]), whole[:37])
    assert torch.equal(run(x[37:], y[37:], seeds[37:]), whole[37:])


def test_sample_streams_depend_only_on_each_samples_seed_and_draws():
    """Square's per-sample uniforms: a sample's draws are one sequence fixed by its seed, the
    same whichever samples share its batch or how its draws are split into rows."""
    cpu, seeds = torch.device("cpu"), torch.arange(500, 560)
    whole = SampleStreams.seeded(seeds, cpu)
    first = whole.rand((60, 5))
    evens = whole.subset(torch.arange(0, 60, 2))
    second = evens.subset(torch.tensor([1, 2])).rand((2, 3))  # samples 2 and 4 go on
    third = whole.rand((60, 2))  # where each sample's stream has got to
    four, three = (SampleStreams.seeded([int(seeds[i])], cpu) for i in (4, 3))
    assert torch.equal(four.rand((1, 10))[0], torch.cat([first[4], second[1], third[4]]))
    assert torch.equal(three.rand((1, 7))[0], torch.cat([first[3], third[3]]))
    again = SampleStreams.seeded(seeds.tolist(), cpu)  # a list of ints seeds as the tensor does
    assert torch.equal(draw(torch.rand, (60, 5), again, cpu, torch.float32), first)
    with pytest.raises(ValueError, match="uniforms only"):
        draw(torch.randn, (60, 5), whole, cpu, torch.float32)


def test_a_rewound_stream_goes_on_as_if_the_draws_were_never_made():
    cpu = torch.device("cpu")
    fresh = SampleStreams.seeded(torch.arange(6) + 11, cpu).rand((6, 8))
    streams = SampleStreams.seeded(torch.arange(6) + 11, cpu)
    assert torch.equal(streams.rand((6, 5)), fresh[:, :5])
    streams.subset(torch.tensor([1, 4])).rewind(torch.tensor([5, 2]))  # 1 all back, 4 keeps 3
    again = streams.rand((6, 3))
    assert torch.equal(again[1], fresh[1, :3]) and torch.equal(again[4], fresh[4, 3:6])
    assert torch.equal(again[0], fresh[0, 5:8])


def test_a_square_that_changes_nothing_is_redrawn_as_if_one_draw_at_a_time():
    """The L∞ step against the paper's loop (redraw the signs until the square changes the
    image), run sample by sample on the same streams: the same candidates, and the streams
    where they would have got to."""
    from monitor.attacks.square import _RESAMPLES, _linf_step, _signs, _window

    cpu, n, eps = torch.device("cpu"), 400, 0.1
    x = torch.full((n, 1, 4, 4), 0.5)
    flips = torch.rand((n, 1, 4, 4), generator=torch.Generator().manual_seed(0)) < 0.5
    best = x + eps * torch.where(flips, -1.0, 1.0)  # a one-pixel square is unchanged half the time
    ours = SampleStreams.seeded(torch.arange(n), cpu)
    candidate = _linf_step(x, best, eps, 1, ours)
    theirs = SampleStreams.seeded(torch.arange(n), cpu)
    expected, redrawn = best.clone(), 0
    for i in range(n):
        one = theirs.subset(torch.tensor([i]))
        u = one.rand((1, 3))
        window = _window(u, (1, 1, 4, 4), 1)
        clean, current = x[i : i + 1][window], best[i : i + 1][window]
        square = (clean + eps * _signs(u[:, 2:]).view(1, 1, 1, 1)).clamp(0.0, 1.0)
        for _ in range(_RESAMPLES):
            if not torch.equal(square, current):
                break
            redrawn += 1
            square = (clean + eps * _signs(one.rand((1, 1))).view(1, 1, 1, 1)).clamp(0.0, 1.0)
        expected[i : i + 1][window] = square
    assert redrawn > n // 3  # the redraw is exercised
    assert torch.equal(candidate, expected)
    assert bool((candidate != best).flatten(1).any(dim=1).all())  # no query wasted
    assert torch.equal(ours.rand((n, 4)), theirs.rand((n, 4)))


def test_sample_streams_look_uniform_and_independent():
    n, k = 2000, 500
    u = SampleStreams.seeded(torch.arange(n), torch.device("cpu")).rand((n, k)).double()
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.002 and abs(float(u.var()) - 1 / 12) < 5e-4
    counts = torch.histc(u, bins=64, min=0.0, max=1.0)
    assert float((counts / (n * k / 64) - 1).abs().max()) < 0.05
    centred = u - 0.5
    along = (centred[:, 1:] * centred[:, :-1]).mean() * 12  # lag-1 correlation in a stream
    across = (centred[1:] * centred[:-1]).mean() * 12  # neighbouring seeds, same draw
    assert abs(float(along)) < 0.01 and abs(float(across)) < 0.01
    assert len(torch.unique(u[:, :8], dim=0)) == n  # no two seeds share a stream


def _softmax_regression(digits) -> tuple[np.ndarray, np.ndarray]:
    """A numpy multinomial logistic regression on the digits (the black box's weights)."""
    features = digits.x.flatten(1).numpy().astype(np.float64)
    onehot = np.eye(10)[digits.y.numpy()]
    weights, bias = np.zeros((features.shape[1], 10)), np.zeros(10)
    for _ in range(300):
        error = _softmax(features @ weights + bias) - onehot
        weights -= 0.5 * features.T @ error / len(features)
        bias -= 0.5 * error.mean(0)
    return weights, bias


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _linf_robust(weights, bias, x, y, eps) -> float:
    """The exact L∞ robust accuracy of a linear classifier on [0, 1]: against each class j
    the margin is lowest with every pixel at its bound against the sign of w_y - w_j."""
    features, labels = x.flatten(1).double().numpy(), y.numpy()
    robust = np.ones(len(labels), dtype=bool)
    for j in range(weights.shape[1]):
        direction = (weights[:, labels] - weights[:, [j]]).T
        worst = np.clip(features - eps * np.sign(direction), 0.0, 1.0)
        margin = (worst * direction).sum(1) + bias[labels] - bias[j]
        robust &= (margin > 0) | (labels == j)
    return float(robust.mean())


def test_a_black_box_of_probabilities_is_attacked_through_their_logarithm(digits):
    weights, bias = _softmax_regression(digits)
    logits = lambda x: x.flatten(1).double().numpy() @ weights + bias  # noqa: E731
    probabilities = lambda x: _softmax(logits(x))  # noqa: E731 (what the endpoint answers)
    log_probabilities = lambda x: np.log(probabilities(x))  # noqa: E731
    x, y = digits.x[:200], digits.y[:200]
    clean = _accuracy(logits, x, y)
    for norm, eps in [("linf", 0.1), ("l2", 1.0)]:
        via_logits = square(logits, x, y, eps, norm=norm, queries=300, seed=0)
        via_probabilities = square(log_probabilities, x, y, eps, norm=norm, queries=300, seed=0)
        robust = _accuracy(logits, via_probabilities, y)
        assert robust < clean - 0.2
        assert abs(robust - _accuracy(logits, via_logits, y)) <= 0.01
        if norm == "linf":
            exact = _linf_robust(weights, bias, x, y, eps)
            assert exact <= robust <= exact + 0.02


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("linf", 0.2), ("l2", 1.0)])
def test_as_strong_as_torchattacks_square(trained_cnn, digits, norm, eps, monkeypatch):
    """torchattacks (like AutoAttack) draws a square's corner in [0, h - s), never at the last
    row or column, which leaves a quarter of an 8×8 image out of reach (robust accuracy 0.60
    against ours 0.47 at L∞ 0.1): with corners drawn in [0, h - s], as ours, the two agree."""
    torchattacks = torchattacks_or_skip()
    from torchattacks.attacks.square import Square

    def corner(self, low=0, high=1, shape=(1,)):
        return (low + (high - low + 1) * torch.rand(shape)).long().clamp_(max=high)

    x, y = digits.x[:200], digits.y[:200]
    adv = square(trained_cnn, x, y, eps, norm=norm, queries=1000, seed=0)
    ours = _accuracy(trained_cnn, adv, y)
    monkeypatch.setattr(Square, "random_int", corner)
    attack = torchattacks.Square(
        trained_cnn, norm={"linf": "Linf", "l2": "L2"}[norm], eps=eps, n_queries=1000, seed=0
    )
    assert abs(ours - _accuracy(trained_cnn, attack(x, y), y)) <= 0.02


class _Rounded(nn.Module):
    """Inputs rounded to 4 grey levels before the CNN: its input gradient is zero everywhere."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x * 3) / 3)


def test_square_fools_a_model_that_masks_its_gradients(trained_cnn, digits):
    masked = _Rounded(trained_cnn)
    x, y = digits.x[:200], digits.y[:200]
    assert float(input_gradient(masked, x, y, False)[0].abs().max()) == 0.0
    clean = _accuracy(masked, x, y)
    blind = _accuracy(masked, pgd(masked, x, y, 0.2, steps=20, seed=0), y)
    robust = _accuracy(masked, square(masked, x, y, 0.2, queries=1000, seed=0), y)
    assert blind >= clean - 0.05  # PGD sees no gradient and stays near its random start
    assert robust <= 0.1 < clean - 0.8


@pytest.mark.parametrize("shape", [(3, 12, 10), (2, 4, 3)])
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.5)])
def test_colour_and_odd_shapes_stay_in_bounds(shape, norm, eps):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), 5))
    x = torch.rand(40, *shape)
    y = model(x).argmax(1).detach()
    stats = AttackStats()
    adv = square(model, x, y, eps, norm=norm, queries=100, seed=0, stats=stats)
    delta = (adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert adv.shape == x.shape and float(size.max()) <= eps + 1e-5
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert float(size.min()) > 0.5 * eps  # the search spends its budget
    assert 40 <= stats.forward <= 40 * 100


def test_bad_arguments_are_refused(trained_cnn, digits):
    x, y = digits.x[:4], digits.y[:4]
    with pytest.raises(ValueError, match="norm"):
        square(trained_cnn, x, y, 0.1, norm="l1")
    with pytest.raises(ValueError, match="queries"):
        square(trained_cnn, x, y, 0.1, queries=0)
    with pytest.raises(ValueError, match="N×K"):
        square(lambda xs: torch.zeros(len(xs)), x, y, 0.1, queries=5)
