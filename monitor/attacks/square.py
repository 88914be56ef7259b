"""Square Attack: Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020 (L∞ and L2, untargeted).

A random search on the margin loss that needs only scores, no gradients: each step changes the
perturbation in one square window (a fresh ±eps square in L∞; in L2 a "meta pseudo-gaussian"
bump that takes the budget of a second window) and keeps the change where the margin fell. It
is the query-based member of AutoAttack and catches defences that mask gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from monitor.attacks.core import (
    AttackStats,
    Generators,
    SampleStreams,
    Seed,
    attack_mode,
    check_inputs,
    draw,
    make_streams,
    subset,
)

Scores = Callable[[torch.Tensor], torch.Tensor]

# p, the share of the image one square covers, halves after each of these steps (counted on a
# 10 000-step scale): p_init / 2 after step 10, ..., p_init / 512 after step 8000
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
_RESAMPLES = 16  # L∞: signs drawn again (free) when a square would not change the image
_TINY = 1e-12


def square(
    scores: Scores,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    restarts: int = 1,
    seed: Seed = None,
    stats: AttackStats | None = None,
) -> torch.Tensor:
    """Square Attack on the margin z_y - max_{i≠y} z_i in the L∞ or L2 ball of radius ``eps``.

    ``scores`` maps a float batch N×C×H×W in [0, 1] to N×K logits or log-probabilities (a
    tensor or array; the margin is the same for both): an nn.Module, run in eval mode on its
    device, or any callable such as a remote endpoint, fed on x's device. It is called under
    no_grad, once per step, with every sample still robust. Defaults: 5000 queries, p_init
    0.8 (AutoAttack's, both norms), one restart. Queries per sample: the random start (L∞
    vertical stripes, L2 bumps) counts as one, each step as one; a sample stops once
    misclassified, so it spends at most ``queries`` per restart, and each further restart
    starts afresh on the samples not yet fooled. ``stats.forward`` counts every query,
    ``stats.queries`` gets one int64 count per sample (appended per call). ``seed``: an int, or
    one per sample (each sample's squares then come from its own counter-based stream, the
    same at any batch size and on any device). Returns x_adv on x's device, inside the ball
    and [0, 1]: per sample the first misclassified point, else the one of lowest margin.
    """
    check_inputs(x, y, eps)
    if queries < 1 or restarts < 1:
        raise ValueError("queries and restarts must be at least 1")
    if not 0.0 < p_init <= 1.0:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    search = _search(norm)
    with _scoring(scores, x) as device:
        x0, y0 = x.detach().to(device), y.to(device)
        gen = make_streams(seed, device)
        best = x0.clone()
        margin = torch.full((len(x0),), torch.inf, device=device)
        spent = torch.zeros(len(x0), dtype=torch.int64, device=device)
        query = lambda xs, ys: _margin(scores, xs, ys, stats)  # noqa: E731
        for _ in range(restarts):
            idx = (margin >= 0).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, m, used = _run(
                query, x0[idx], y0[idx], eps, search, queries, p_init, subset(gen, idx)
            )
            better = m < margin[idx]
            best[idx[better]], margin[idx[better]] = adv[better], m[better]
            spent[idx] += used
    if stats is not None:
        spent = spent.cpu()
        stats.queries = spent if stats.queries is None else torch.cat([stats.queries, spent])
    return best.to(x.device)


@dataclass(frozen=True)
class _Search:
    """One norm's random search: the start, the square's side at a share p, and one step."""

    start: Callable[[torch.Tensor, float, Generators], torch.Tensor]
    side: Callable[[float, int, int], int]
    step: Callable[[torch.Tensor, torch.Tensor, float, int, Generators], torch.Tensor]


def _search(norm: str) -> _Search:
    try:
        return _SEARCHES[norm]
    except KeyError:
        raise ValueError(f"square supports norm 'linf' or 'l2', not {norm!r}") from None


@contextmanager
def _scoring(scores: Scores, x: torch.Tensor) -> Iterator[torch.device]:
    """no_grad, yielding where queries go: an nn.Module's device (in eval mode), else x's."""
    if isinstance(scores, nn.Module):
        with attack_mode(scores) as device, torch.no_grad():
            yield device
    else:
        with torch.no_grad():
            yield x.device


def _margin(
    scores: Scores, x: torch.Tensor, y: torch.Tensor, stats: AttackStats | None
) -> torch.Tensor:
    """One batched query: per sample z_y - max_{i≠y} z_i (negative once misclassified)."""
    z = torch.as_tensor(scores(x)).to(x.device).float()
    if z.ndim != 2 or len(z) != len(x):
        raise ValueError(f"scores must be N×K for {len(x)} inputs, got shape {tuple(z.shape)}")
    if stats is not None:
        stats.forward += len(x)
    true = z.gather(1, y[:, None]).squeeze(1)
    return true - z.scatter(1, y[:, None], -torch.inf).amax(dim=1)


def _run(
    query: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    search: _Search,
    queries: int,
    p_init: float,
    gen: Generators,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One restart: (x_adv, margin, queries spent) per sample."""
    h, w = x.shape[2:]
    best = search.start(x, eps, gen)
    margin = query(best, y)
    spent = torch.ones(len(x), dtype=torch.int64, device=x.device)
    live = _Live.of(margin >= 0, x, y, best, margin, gen=gen)  # early stop: the fooled keep theirs
    for i in range(queries - 1):
        if live.idx.numel() == 0:
            break
        side = search.side(_share(p_init, i, queries), h, w)
        candidate = search.step(live.x, live.best, eps, side, live.gen)
        m = query(candidate, live.y)
        better = m < live.margin
        live.best[better], live.margin[better] = candidate[better], m[better]
        spent[live.idx] += 1
        fooled = live.margin < 0
        if fooled.any():
            live = live.drop(fooled, best, margin)
    live.drop(torch.ones_like(live.margin, dtype=torch.bool), best, margin)
    return best, margin, spent


@dataclass
class _Live:
    """The samples still searching, gathered once (not at every step): their indices, clean
    inputs, labels, best points, margins and random streams."""

    idx: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    best: torch.Tensor
    margin: torch.Tensor
    gen: Generators

    @staticmethod
    def of(keep: torch.Tensor, *tensors: torch.Tensor, gen: Generators) -> _Live:
        """The samples ``keep`` of x, y, best and margin (in that order)."""
        idx = keep.nonzero().squeeze(1)
        x, y, best, margin = tensors
        return _Live(idx, x[idx], y[idx], best[idx], margin[idx], subset(gen, idx))

    def drop(self, out: torch.Tensor, best: torch.Tensor, margin: torch.Tensor) -> _Live:
        """Writes the samples ``out`` back into ``best`` and ``margin``; the others go on."""
        best[self.idx[out]], margin[self.idx[out]] = self.best[out], self.margin[out]
        keep = (~out).nonzero().squeeze(1)
        return _Live(self.idx[keep], self.x[keep], self.y[keep], self.best[keep],
                     self.margin[keep], subset(self.gen, keep))  # fmt: skip


def _share(p_init: float, i: int, queries: int) -> float:
    """p at step i: the paper's schedule, rescaled to the query budget."""
    progress = int(i / queries * 10000)
    return p_init / 2 ** sum(progress > step for step in _HALVINGS)


def _uniform(n: int, k: int, gen: Generators, device: torch.device) -> torch.Tensor:
    """n×k draws in [0, 1): every random choice of one step, one row per sample."""
    return draw(torch.rand, (n, k), gen, device, torch.float32)


def _signs(u: torch.Tensor) -> torch.Tensor:
    return torch.where(u < 0.5, -1.0, 1.0)


def _window(u: torch.Tensor, shape: torch.Size, side: int) -> tuple[torch.Tensor, ...]:
    """Index of one side×side square per sample, every channel (``t[window]`` is
    n×C×side×side), its corner uniform in [0, h - side] × [0, w - side] (from u: n×2). The
    paper's code (and torchattacks') draws it in [0, h - side), so that after the start the
    last row and column never change: on 8×8 digits that leaves robust accuracy 0.13 higher."""
    n, c, h, w = shape
    span = torch.arange(side, device=u.device)
    top = (u[:, 0] * (h - side + 1)).long().clamp_(max=h - side)[:, None] + span
    left = (u[:, 1] * (w - side + 1)).long().clamp_(max=w - side)[:, None] + span
    rows, channels = torch.arange(n, device=u.device), torch.arange(c, device=u.device)
    return (
        rows.view(-1, 1, 1, 1),
        channels.view(1, -1, 1, 1),
        top[:, None, :, None],
        left[:, None, None, :],
    )


# L∞: the perturbation is ±eps per pixel and channel; a step sets one square to a random sign
# per channel.


def _linf_start(x: torch.Tensor, eps: float, gen: Generators) -> torch.Tensor:
    """Vertical stripes: one random sign per channel and column."""
    n, c, _, w = x.shape
    signs = _signs(_uniform(n, c * w, gen, x.device)).view(n, c, 1, w)
    return (x + eps * signs).clamp_(0.0, 1.0)


def _linf_side(p: float, h: int, w: int) -> int:
    return min(max(round(math.sqrt(p * h * w)), 1), h, w)


def _linf_step(
    x: torch.Tensor, best: torch.Tensor, eps: float, side: int, gen: Generators
) -> torch.Tensor:
    n, c = x.shape[:2]
    u = _uniform(n, 2 + c, gen, x.device)
    window = _window(u, x.shape, side)
    signs, current, clean = _signs(u[:, 2:]), best[window], x[window]
    square_ = (clean + eps * signs.view(n, c, 1, 1)).clamp_(0.0, 1.0)
    same = (square_ == current).flatten(1).all(dim=1).nonzero().squeeze(1)
    if same.numel():  # as the paper's code: a square that changes nothing is redrawn
        square_[same] = _redrawn(clean[same], current[same], eps, subset(gen, same))
    candidate = best.clone()
    candidate[window] = square_
    return candidate


def _redrawn(
    clean: torch.Tensor, current: torch.Tensor, eps: float, gen: Generators
) -> torch.Tensor:
    """The first of up to _RESAMPLES fresh squares (m×C×side×side) per sample that differs
    from the current one (else the last), their signs drawn at once; a counter-based stream
    takes back the draws after the ones used, so each sample's stream goes on as if drawn one
    try at a time."""
    m, c = clean.shape[:2]
    signs = _signs(_uniform(m, _RESAMPLES * c, gen, clean.device)).view(m, _RESAMPLES, c)
    # per channel: would the square at +eps, at -eps leave the window as it is?
    kept = [((clean + eps * s).clamp_(0.0, 1.0) == current).flatten(2).all(dim=2) for s in (1, -1)]
    same = torch.where(signs > 0, kept[0][:, None], kept[1][:, None]).all(dim=2)  # m×tries
    used = torch.where(same.all(dim=1), _RESAMPLES - 1, (~same).int().argmax(dim=1))
    if isinstance(gen, SampleStreams):
        gen.rewind((_RESAMPLES - 1 - used) * c)
    chosen = signs[torch.arange(m, device=clean.device), used]
    return (clean + eps * chosen.view(m, c, 1, 1)).clamp_(0.0, 1.0)


# L2: the perturbation has norm eps; a step moves the mass of two windows into the first one,
# adding a bump of random sign per channel.


def _l2_start(x: torch.Tensor, eps: float, gen: Generators) -> torch.Tensor:
    """A grid of bumps (about 5×5 tiles of side h//5), each with its own signs and
    orientation, scaled to norm eps."""
    n, c, h, w = x.shape
    side = max(h // 5, 1)
    offset, th, tw = max((h - 5 * side) // 2, 0), h // side, w // side
    u = _uniform(n, th * tw * (1 + c), gen, x.device)
    bump = _bump(side).to(x.device, x.dtype)
    flip = (u[:, : th * tw] < 0.5).view(n, 1, th, tw, 1, 1)
    signs = _signs(u[:, th * tw :]).view(n, c, th, tw, 1, 1)
    tiles = torch.where(flip, bump.T, bump) * signs
    grid = tiles.permute(0, 1, 2, 4, 3, 5).reshape(n, c, th * side, tw * side)
    delta = x.new_zeros(n, c, max(h, offset + th * side), max(w, offset + tw * side))
    delta[:, :, offset : offset + th * side, offset : offset + tw * side] = grid
    return _l2_point(x, delta[:, :, :h, :w], eps)


def _l2_side(p: float, h: int, w: int) -> int:
    side = max(round(math.sqrt(p * h * w)), 3)
    return min(side + 1 - side % 2, h, w)  # odd


def _l2_step(
    x: torch.Tensor, best: torch.Tensor, eps: float, side: int, gen: Generators
) -> torch.Tensor:
    n, c = x.shape[:2]
    u = _uniform(n, 5 + c, gen, x.device)
    first, second = _window(u[:, :2], x.shape, side), _window(u[:, 2:4], x.shape, side)
    delta = best - x
    union = torch.zeros_like(delta)
    union[first], union[second] = 1.0, 1.0
    room = (eps**2 - delta.pow(2).flatten(1).sum(1)).clamp(min=0.0).view(n, 1, 1, 1) / c
    mass = (delta * union).pow(2).sum(dim=(2, 3), keepdim=True)  # per channel, both windows
    old = delta[first] / (_channel_norm(delta[first]) + _TINY)
    bump = _bump(side).to(x.device, x.dtype)
    bump = torch.where((u[:, 4] < 0.5).view(n, 1, 1, 1), bump.T, bump)
    new = bump * _signs(u[:, 5:]).view(n, c, 1, 1) + old
    delta[second] = 0.0
    delta[first] = new / (_channel_norm(new) + _TINY) * (room + mass).sqrt()
    return _l2_point(x, delta, eps)


def _channel_norm(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).sum(dim=(2, 3), keepdim=True).sqrt()


def _l2_point(x: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """x + delta rescaled to norm eps, clamped to [0, 1] (which only shrinks it)."""
    size = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    return (x + delta / (size + _TINY) * eps).clamp_(0.0, 1.0)


@lru_cache(maxsize=64)
def _bump(side: int) -> torch.Tensor:
    """The paper's "meta pseudo-gaussian" side×side perturbation: a positive bump over the top
    half, a negative one over the bottom half, unit L2 norm (float64, CPU)."""
    bump = torch.cat([_half_bump(side // 2, side), -_half_bump(side - side // 2, side)])
    return bump / bump.norm()


def _half_bump(rows: int, cols: int) -> torch.Tensor:
    """Sum over the squares of radius k = 0, 1, ... around the centre of 1/(k+1)², unit norm:
    a pixel at Chebyshev distance d gets the tail sum from k = d."""
    radii = max(rows, cols) // 2 + 1
    tail = (1.0 / torch.arange(1, radii + 1, dtype=torch.float64) ** 2).flip(0).cumsum(0).flip(0)
    dr = (torch.arange(rows) - rows // 2).abs()
    dc = (torch.arange(cols) - cols // 2).abs()
    half = tail[torch.maximum(dr[:, None], dc[None, :])]
    return half / half.norm() if rows else half


_SEARCHES = {
    "linf": _Search(_linf_start, _linf_side, _linf_step),
    "l2": _Search(_l2_start, _l2_side, _l2_step),
}
