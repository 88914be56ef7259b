"""What every attack needs, in one place: model mode and parameters, devices, the input
gradient, and per-norm steps, projections and random starts.

Attacks work in pixel space: x is float in [0, 1] shaped N×C×H×W, eps is in that scale. The
model returns logits. Parameters never receive gradients and the model's train/eval mode is
restored when the attack ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

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


Generators = torch.Generator | SampleGenerators | None


def draw(
    fn: Callable[..., torch.Tensor],
    shape: Sequence[int],
    gen: Generators,
    device: torch.device,
    dtype: torch.dtype | None,
) -> torch.Tensor:
    """``fn(shape)`` (torch.rand or torch.randn) from one generator, or row by row from one
    generator per sample."""
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
    return gen.subset(idx) if isinstance(gen, SampleGenerators) else gen


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
