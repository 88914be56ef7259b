"""Input-transformation defences and the model that applies them before a classifier.

Transformations (pixel space, N×C×H×W in [0, 1] in and out):

- ``jpeg:QUALITY`` — JPEG compression and decompression (Dziugaite et al. 2016); not
  differentiable.
- ``bits:N`` — bit-depth reduction to N bits (Xu et al. 2018); gradient zero almost everywhere.
- ``blur:SIGMA`` — Gaussian blur; differentiable.
- ``random-resize:PIXELS`` — random resizing and padding (Xie et al. 2018); randomised.

They are the classic examples of *obfuscated gradients* (Athalye, Carlini & Wagner, ICML 2018):
attacked naively they look robust. ``DefendedModel.attack_view()`` is the module attacks
differentiate: non-differentiable transformations use BPDA (their forward pass, the identity's
gradient) and randomised ones declare ``eot_samples``, which ``input_gradient`` averages over.
Only torch (and Pillow for JPEG) is needed here.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Transform(nn.Module):
    """One input transformation; subclasses say whether gradients pass and whether it is random."""

    differentiable: bool = True
    randomized: bool = False
    spec: str = ""


class BitDepth(Transform):
    differentiable = False

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError("bits:N takes N from 1 to 8")
        self.levels, self.spec = 2**bits - 1, f"bits:{bits}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.levels) / self.levels


class Jpeg(Transform):
    differentiable = False

    def __init__(self, quality: int) -> None:
        super().__init__()
        if not 1 <= quality <= 95:
            raise ValueError("jpeg:QUALITY takes a quality from 1 to 95")
        self.quality, self.spec = quality, f"jpeg:{quality}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        pixels = (x.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out = []
        for image in pixels:
            buffer = io.BytesIO()
            grey = image.shape[2] == 1
            Image.fromarray(image[..., 0] if grey else image).save(
                buffer, format="JPEG", quality=self.quality
            )
            decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(buffer.getvalue()))))
            out.append(decoded.unsqueeze(-1) if grey else decoded)
        return torch.stack(out).permute(0, 3, 1, 2).to(x.device, x.dtype) / 255.0


class GaussianBlur(Transform):
    def __init__(self, sigma: float) -> None:
        super().__init__()
        if not 0 < sigma <= 10:
            raise ValueError("blur:SIGMA takes a sigma above 0 and at most 10")
        radius = max(1, math.ceil(2 * sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
        self.register_buffer("kernel", kernel / kernel.sum())
        self.radius, self.spec = radius, f"blur:{sigma:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        k = self.kernel.to(x.dtype)
        padded = F.pad(x, (self.radius,) * 4, mode="replicate")
        rows = F.conv2d(padded, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return F.conv2d(rows, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class RandomResize(Transform):
    """Resize to a random size up to PIXELS larger, pad at a random offset, resize back."""

    randomized = True

    def __init__(self, pixels: int) -> None:
        super().__init__()
        if not 1 <= pixels <= 64:
            raise ValueError("random-resize:PIXELS takes 1 to 64 pixels")
        self.pixels, self.spec = pixels, f"random-resize:{pixels}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = int(torch.randint(0, self.pixels + 1, (1,)))
        resized = F.interpolate(x, size=(h + size, w + size), mode="nearest")
        top = int(torch.randint(0, self.pixels - size + 1, (1,)))
        left = int(torch.randint(0, self.pixels - size + 1, (1,)))
        padded = F.pad(
            resized, (left, self.pixels - size - left, top, self.pixels - size - top), value=0.0
        )
        return F.interpolate(padded, size=(h, w), mode="bilinear", align_corners=False)


TRANSFORMS: dict[str, tuple[type[Transform], type]] = {
    "jpeg": (Jpeg, int),
    "bits": (BitDepth, int),
    "blur": (GaussianBlur, float),
    "random-resize": (RandomResize, int),
}


def parse_transform(text: str) -> Transform:
    """``"jpeg:75"`` -> Jpeg(75); ValueError with the accepted forms otherwise."""
    name, _, value = text.partition(":")
    if name not in TRANSFORMS or not value:
        raise ValueError(
            f"unknown transform {text!r}; use jpeg:QUALITY, blur:SIGMA, bits:N or "
            "random-resize:PIXELS"
        )
    cls, kind = TRANSFORMS[name]
    try:
        number = kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{text!r}: {value!r} is not {what}") from None
    return cls(number)


class _StraightThrough(torch.autograd.Function):
    """BPDA: the transformation's output forward, the identity's gradient backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, transform: Transform) -> torch.Tensor:
        with torch.no_grad():
            return transform(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


class DefendedModel(nn.Module):
    """Transformations, in order, before a classifier; returns the classifier's logits.

    Pickles by exporting the classifier with ``torch.export`` (so models loaded from MLflow's
    pt2 format, which cannot be pickled, can be defended) and rebuilding the transformations
    from their specs.
    """

    def __init__(
        self,
        base: nn.Module,
        transforms: list[Transform],
        input_shape: tuple[int, ...],
        bpda: bool = False,
        eot_samples: int = 1,
    ) -> None:
        super().__init__()
        self.base = base
        self.transforms = nn.ModuleList(transforms)
        self.input_shape = tuple(input_shape)
        self.bpda = bpda
        self.eot_samples = eot_samples

    def train(self, mode: bool = True) -> DefendedModel:
        """Transformations follow the mode; a pt2 classifier stays in eval mode (it refuses)."""
        self.training = mode
        for transform in self.transforms:
            transform.train(mode)
        with contextlib.suppress(NotImplementedError):
            self.base.train(mode)
        return self

    @property
    def specs(self) -> list[str]:
        return [t.spec for t in self.transforms]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            if self.bpda and not transform.differentiable:
                x = _StraightThrough.apply(x, transform)
            else:
                x = transform(x)
        return self.base(x)

    def attack_view(self, eot_samples: int = 10) -> DefendedModel:
        """The same model for attackers: BPDA through non-differentiable transformations, and
        ``eot_samples`` draws per gradient when a transformation is randomised."""
        randomized = any(t.randomized for t in self.transforms)
        return DefendedModel(
            self.base,
            list(self.transforms),
            self.input_shape,
            bpda=True,
            eot_samples=eot_samples if randomized else 1,
        )

    def adaptations(self, eot_samples: int = 10) -> list[str]:
        """What an adaptive attack does per transformation, for the audit's record."""
        notes = []
        for t in self.transforms:
            if t.randomized:
                notes.append(f"{t.spec}: EOT over {eot_samples} draws")
            elif not t.differentiable:
                notes.append(f"{t.spec}: BPDA (identity gradient)")
            else:
                notes.append(f"{t.spec}: exact gradient")
        return notes

    def __reduce__(self):
        example = torch.rand(2, *self.input_shape)
        batch = torch.export.Dim("batch")
        program = torch.export.export(self.base, (example,), dynamic_shapes=({0: batch},))
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        return (_restore, (buffer.getvalue(), self.specs, self.input_shape))


def _restore(program: bytes, specs: list[str], input_shape: tuple[int, ...]) -> DefendedModel:
    base = torch.export.load(io.BytesIO(program)).module()
    return DefendedModel(base, [parse_transform(s) for s in specs], input_shape)
