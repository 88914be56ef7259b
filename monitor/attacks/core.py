"""What every attack needs, in one place: model mode and parameters, devices, the input
gradient, and per-norm steps, projections and random starts.

Attacks work in pixel space: x is float in [0, 1] shaped N×C×H×W, eps is in that scale. The
model returns logits. Parameters never receive gradients and the model's train/eval mode is
restored when the attack ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

_TINY = 1e-12


@dataclass
class AttackStats:
    """Samples pushed through the model: forward passes and backward passes to the input."""

    forward: int = 0
    backward: int = 0
    queries: torch.Tensor | None = None  # query attacks (square): int64 per sample, CPU


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[torch.device]:
    """Eval mode (where the model allows switching) and frozen parameters, restored on exit.

    Yields the device the model lives on. Models exported with torch.export (MLflow's pt2
    format) refuse ``.eval()``; they are already in eval mode and are used as they are.
    """
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    switched = False
    if model.training:
        try:
            model.eval()
            switched = True
        except NotImplementedError:
            pass
    try:
        with torch.enable_grad():
            yield model_device(model)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        if switched:
            model.train()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def attacker_loss(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-sample loss the attacker ascends: cross-entropy, negated towards a target."""
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    return -loss if targeted else loss


# (logits N×K, labels N) -> the per-sample loss N that the attacker ascends
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dlr_loss(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-sample Difference of Logits Ratio (Croce & Hein 2020), the attacker ascends it.

    With z sorted in decreasing order as π: -(z_y - max_{i≠y} z_i) / (z_π1 - z_π3), and
    towards ``target`` t: -(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2), 1e-12 added below. The
    ratio does not change when the logits are shifted or scaled, so a model cannot hide behind
    the scale of its logits as it can with cross-entropy. Its scale needs 3 logits (4 towards a
    target): with fewer classes it falls back to ``attacker_loss`` (cross-entropy, negated
    towards the target). ``logits`` N×K; ``y`` (the true labels) and ``target`` N, int64.
    """
    z = logits.float()
    if z.shape[1] < (3 if target is None else 4):
        return attacker_loss(z, y if target is None else target, target is not None)
    top = z.sort(dim=1, descending=True).values
    z_y = z.gather(1, y[:, None]).squeeze(1)
    if target is None:
        runner_up = torch.where(top[:, 0] == z_y, top[:, 1], top[:, 0])  # max over i != y
        return -(z_y - runner_up) / (top[:, 0] - top[:, 2] + _TINY)
    z_t = z.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + _TINY)


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    targeted: bool,
    stats: AttackStats | None = None,
    *,
    loss: LossFn | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed attacker loss with respect to x, and the logits at x.

    The loss is ``loss(logits, y)`` per sample, by default ``attacker_loss`` (cross-entropy,
    negated when ``targeted``). A randomised model that declares ``eot_samples = k`` (a
    defended model's attack view) gets EOT (Athalye et al. 2018): the loss gradient averaged
    over k draws, in one batched pass; the logits returned are the mean over the draws.
    """
    k = int(getattr(model, "eot_samples", 1) or 1)
    per_sample = loss or (lambda z, labels: attacker_loss(z, labels, targeted))
    x = x.detach().requires_grad_(True)
    logits = model(x.repeat(k, *([1] * (x.ndim - 1))) if k > 1 else x)
    draws = logits.view(k, len(x), -1) if k > 1 else (logits,)
    total = sum(per_sample(z, y).sum() for z in draws) / k
    if total.requires_grad:
        (grad,) = torch.autograd.grad(total, x)
    else:  # the model cut the graph (a non-differentiable defence attacked naively)
        grad = torch.zeros_like(x)
    if k > 1:
        logits = logits.view(k, len(x), -1).mean(dim=0)
    if stats is not None:
        stats.forward += k * len(x)
        stats.backward += k * len(x)
    return grad, logits.detach()


def succeeded(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Boolean per sample: misclassified (untargeted) or classified as the target (targeted)."""
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


class SampleGenerators:
    """One seeded CPU generator per sample: a sample's random draws (starts, restarts) do not
    depend on which other samples share its batch, so an attack gives the same result per
    sample at any batch size, on any device."""

    def __init__(self, generators: list[torch.Generator]) -> None:
        self.generators = generators

    @staticmethod
    def seeded(seeds: Sequence[int] | torch.Tensor) -> SampleGenerators:
        values = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
        return SampleGenerators([torch.Generator().manual_seed(int(s)) for s in values])

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, idx: torch.Tensor) -> SampleGenerators:
        """The generators of samples ``idx`` (the same objects: their streams go on)."""
        return SampleGenerators([self.generators[i] for i in idx.tolist()])


class SampleStreams:
    """One counter-based random stream per sample, drawn for the whole batch in tensor ops:
    SplitMix64, whose draw j (j = 1, 2, ...) from key k is mix64(k + j·golden), the key hashed
    once from the sample's seed. As with SampleGenerators, a sample's draws depend only on its
    seed and how many it has made, never on its batch, and they are the same on every device;
    unlike them, a draw costs no Python loop over the samples. Uniforms only."""

    def __init__(self, positions: torch.Tensor, rows: torch.Tensor) -> None:
        # per sample key + (draws made)·golden, the counter and the key in one int64 word
        self.positions, self.rows = positions, rows

    @staticmethod
    def seeded(seeds: Sequence[int] | torch.Tensor, device: torch.device) -> SampleStreams:
        if isinstance(seeds, torch.Tensor):
            words = seeds.to(device, torch.int64)
        else:
            words = torch.tensor([_word(int(s)) for s in seeds], dtype=torch.int64, device=device)
        return SampleStreams(_mix64(words), torch.arange(len(words), device=device))

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, idx: torch.Tensor) -> SampleStreams:
        """The streams of samples ``idx`` (sharing the positions: their streams go on)."""
        return SampleStreams(self.positions, self.rows.index_select(0, idx.to(self.rows.device)))

    def rewind(self, counts: torch.Tensor) -> None:
        """Takes back each sample's last ``counts`` draws (int64 per sample), as if never made:
        a batched draw of more than a sample turned out to need gives the rest back."""
        self.positions[self.rows] -= counts.to(self.positions.device, torch.int64) * _GOLDEN

    def rand(self, shape: Sequence[int]) -> torch.Tensor:
        """float32 uniforms in [0, 1) shaped ``shape``, one row per sample, from the top 24 bits
        of each draw (as torch.rand): each sample's next draws, advancing its stream."""
        steps = _golden_steps(math.prod(shape[1:]), self.positions.device)
        z = self.positions.index_select(0, self.rows).unsqueeze(1) + steps
        self.positions[self.rows] = z[:, -1]
        # mix64's last xorshift only moves high bits into low ones: the top 24 need only two
        z = _xorshift_multiply_(_xorshift_multiply_(z, 30, _MIX[0]), 27, _MIX[1])
        return _shift_right(z, 40).float().mul_(2.0**-24).view(tuple(shape))


def _word(value: int) -> int:
    """A Python int as the int64 with the same low 64 bits (torch's int64 arithmetic wraps)."""
    return (value + 2**63) % 2**64 - 2**63


_GOLDEN = _word(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: SplitMix64's increment
_MIX = (_word(0xBF58476D1CE4E5B9), _word(0x94D049BB133111EB))  # Stafford's variant 13


@lru_cache(maxsize=64)
def _golden_steps(width: int, device: torch.device) -> torch.Tensor:
    """1·golden, ..., width·golden (wrapped to int64): the offsets of a row of draws."""
    return torch.arange(1, width + 1, device=device) * _GOLDEN


def _shift_right(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical shift of int64 words (torch's >> is arithmetic: it copies the sign bit)."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def _xorshift_multiply_(z: torch.Tensor, bits: int, factor: int) -> torch.Tensor:
    """In place (a draw's words are its own; in-place ops save time on small batches)."""
    return z.bitwise_xor_(_shift_right(z, bits)).mul_(factor)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijection of 64-bit words in which every input bit flips
    about half of the output bits."""
    z = _xorshift_multiply_(_xorshift_multiply_(z.clone(), 30, _MIX[0]), 27, _MIX[1])
    return z ^ _shift_right(z, 31)


Generators = torch.Generator | SampleGenerators | SampleStreams | None


def draw(
    fn: Callable[..., torch.Tensor],
    shape: Sequence[int],
    gen: Generators,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """``fn(shape)`` (torch.rand or torch.randn) from one generator, or row by row from one
    generator per sample; torch.rand only from sample streams, all rows at once."""
    if isinstance(gen, SampleStreams):
        return _stream_draw(fn, shape, gen, device, dtype)
    if not isinstance(gen, SampleGenerators):
        return fn(tuple(shape), generator=gen, device=device, dtype=dtype)
    if len(gen) != shape[0]:
        raise ValueError(f"{len(gen)} sample generators for {shape[0]} samples")
    if not len(gen):
        return torch.empty(tuple(shape), device=device, dtype=dtype)
    rows = [fn(tuple(shape[1:]), generator=g, dtype=dtype) for g in gen.generators]
    return torch.stack(rows).to(device)


def subset(gen: Generators, idx: torch.Tensor) -> Generators:
    """The generator(s) for samples ``idx`` of a batch (a shared generator stays shared)."""
    return gen.subset(idx) if isinstance(gen, (SampleGenerators, SampleStreams)) else gen


def _stream_draw(
    fn: Callable[..., torch.Tensor],
    shape: Sequence[int],
    streams: SampleStreams,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    if fn is not torch.rand:
        raise ValueError("sample streams draw uniforms only (torch.rand)")
    if len(streams) != shape[0]:
        raise ValueError(f"{len(streams)} sample streams for {shape[0]} samples")
    return streams.rand(shape).to(device, dtype or torch.float32)


Seed = int | Sequence[int] | torch.Tensor | None


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.ndim - 1)))


@dataclass(frozen=True)
class Norm:
    """How one norm steps, projects and starts at random."""

    step: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    project: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    random_start: Callable[[torch.Tensor, float, Generators], torch.Tensor]
    size: Callable[[torch.Tensor], torch.Tensor]


def _linf_step(x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
    return x_adv + alpha * grad.sign()


def _linf_project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.clamp(x_adv, (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0))


def _linf_random(x: torch.Tensor, eps: float, gen: Generators) -> torch.Tensor:
    noise = draw(torch.rand, x.shape, gen, x.device, x.dtype)
    return (x + (2.0 * noise - 1.0) * eps).clamp_(0.0, 1.0)


def _l2_step(x_adv: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
    return x_adv + alpha * grad / (_flat_norm(grad) + _TINY)


def _l2_project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    delta = x_adv - x
    delta = delta * torch.clamp(eps / (_flat_norm(delta) + _TINY), max=1.0)
    return (x + delta).clamp_(0.0, 1.0)


def _l2_random(x: torch.Tensor, eps: float, gen: Generators) -> torch.Tensor:
    direction = draw(torch.randn, x.shape, gen, x.device, x.dtype)
    radius = draw(torch.rand, (len(x),) + (1,) * (x.ndim - 1), gen, x.device, None)
    delta = direction / (_flat_norm(direction) + _TINY) * radius * eps
    return (x + delta).clamp_(0.0, 1.0)


NORMS: dict[str, Norm] = {
    "linf": Norm(_linf_step, _linf_project, _linf_random, lambda d: d.flatten(1).abs().amax(dim=1)),
    "l2": Norm(_l2_step, _l2_project, _l2_random, lambda d: d.flatten(1).norm(p=2, dim=1)),
}


def get_norm(norm: str) -> Norm:
    try:
        return NORMS[norm]
    except KeyError:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}") from None


def perturbation_size(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size of x_adv - x in the given norm."""
    return get_norm(norm).size(x_adv - x)


def check_inputs(x: torch.Tensor, y: torch.Tensor, eps: float) -> None:
    """Programmer errors, raised as ValueError (user data is validated before attacks run)."""
    if x.ndim != 4:
        raise ValueError(f"x must be N×C×H×W, got shape {tuple(x.shape)}")
    if len(y) != len(x):
        raise ValueError(f"{len(x)} inputs but {len(y)} labels")
    if not eps >= 0:
        raise ValueError(f"eps must be non-negative, got {eps}")


def make_generator(seed: Seed, device: torch.device) -> Generators:
    """A seeded generator on ``device`` for an int; one CPU generator per sample for a
    sequence of seeds (one per sample); None to use torch's global random state."""
    if seed is None:
        return None
    if isinstance(seed, int) or (isinstance(seed, torch.Tensor) and seed.ndim == 0):
        return torch.Generator(device=device).manual_seed(int(seed))
    return SampleGenerators.seeded(seed)


def make_streams(seed: Seed, device: torch.device) -> Generators:
    """As make_generator, but a sequence of seeds gives counter-based SampleStreams on
    ``device``: per-sample uniforms without a loop over the samples (draw(torch.rand) only)."""
    if seed is None or isinstance(seed, int) or (isinstance(seed, torch.Tensor) and seed.ndim == 0):
        return make_generator(seed, device)
    return SampleStreams.seeded(seed, device)
