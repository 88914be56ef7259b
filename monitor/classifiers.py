"""Loaded models behind one small interface: differentiable torch modules and black boxes.

Both take pixel-space tensors in [0, 1] shaped N×C×H×W; each carries the input contract it was
loaded with (``monitor.contracts``), which converts pixels to what the model takes. Nothing here
imports MLflow: the registry builds these objects, and attacks, audits and the scorer only use
them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from monitor.contracts import InputContract, to_model_array
from monitor.errors import ModelIncompatible

OUTPUT_KINDS = ("logits", "probabilities", "labels")


@dataclass
class TorchClassifier:
    """A differentiable torch module returning logits; ``module`` takes pixel space (a model with
    another input contract is wrapped in a ``contracts.PixelAdapter``)."""

    name: str
    module: torch.nn.Module
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    kind: str = "torch"
    outputs: str = "logits"
    batch_size: int = 512
    input_shape: tuple[int, ...] | None = None  # C, H, W from the signature, when known
    attack_module: torch.nn.Module | None = None  # a faster stand-in used to craft attacks
    contract: InputContract = field(default_factory=InputContract)

    @property
    def crafting_module(self) -> torch.nn.Module:
        """The module attacks differentiate (fast mode's wrapper, else the model itself)."""
        return self.attack_module if self.attack_module is not None else self.module

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits N×K on CPU, computed in batches on the model's device."""
        chunks = [
            self.module(x[i : i + self.batch_size].to(self.device)).float().cpu()
            for i in range(0, len(x), self.batch_size)
        ]
        out = torch.cat(chunks) if chunks else torch.empty(0, 0)
        if out.ndim != 2:
            raise ModelIncompatible(
                f"{self.name} returned outputs of shape {tuple(out.shape)}, not N×classes logits."
            )
        return out

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities N×K (float32, CPU)."""
        return torch.softmax(self.logits(x), dim=1)

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).argmax(dim=1)


@dataclass
class BlackBoxClassifier:
    """A model known only through a predict function on numpy arrays (scikit-learn, pyfunc).

    ``layout`` says how pixel tensors are handed over: ``nchw`` as is, ``nhwc`` channels last,
    ``flat`` one row of C·H·W features per image (how scikit-learn models are usually trained).
    ``contract`` scales and normalises the pixels first (uint8 inputs are rounded and cast).
    The predict function returns class probabilities (N×K) or labels (N).
    """

    name: str
    predict_fn: Callable[[np.ndarray], object]
    layout: str = "nchw"
    dtype: np.dtype = field(default_factory=lambda: np.dtype("float32"))
    kind: str = "blackbox"
    outputs: str = "probabilities"
    batch_size: int = 1024
    input_shape: tuple[int, ...] | None = None  # C, H, W (or features,) from the signature
    contract: InputContract = field(default_factory=InputContract)

    def _raw(self, x: torch.Tensor) -> np.ndarray:
        outs = []
        layout = "nchw" if self.layout == "flat" else self.layout
        contract = replace(self.contract, layout=layout)
        for i in range(0, len(x), self.batch_size):
            chunk = to_model_array(
                x[i : i + self.batch_size].detach().cpu().numpy(), contract, self.dtype
            )
            if self.layout == "flat":
                chunk = chunk.reshape(len(chunk), -1)
            result = self.predict_fn(chunk)
            outs.append(np.asarray(getattr(result, "to_numpy", lambda r=result: r)()))
        return np.concatenate(outs) if outs else np.empty((0,))

    def probabilities(self, x: torch.Tensor) -> torch.Tensor | None:
        """Probabilities N×K, or None when the model returns labels only."""
        raw = self._raw(x)
        if raw.ndim == 1 or (raw.ndim == 2 and raw.shape[1] == 1):
            self.outputs = "labels"
            return None
        probs = torch.as_tensor(raw, dtype=torch.float32)
        rows = probs.sum(dim=1)
        if (probs < 0).any() or not torch.allclose(rows, torch.ones_like(rows), atol=1e-3):
            probs = torch.softmax(probs, dim=1)  # decision scores, not probabilities
        self.outputs = "probabilities"
        return probs

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        raw = self._raw(x)
        if raw.ndim == 2 and raw.shape[1] > 1:
            return torch.as_tensor(raw.argmax(axis=1), dtype=torch.long)
        return torch.as_tensor(raw.reshape(-1).astype(np.int64), dtype=torch.long)


Classifier = TorchClassifier | BlackBoxClassifier


def check_input_shape(model: Classifier, image_shape: tuple[int, ...], data: str) -> None:
    """Raise ModelIncompatible when images cannot be what the model's signature takes."""
    expected = model.input_shape
    if expected is None:
        return
    known = [d for d in expected if d not in (-1, None)]
    fits = (
        tuple(expected) == tuple(image_shape)
        if len(known) == len(expected) == 3
        else int(np_prod(image_shape)) == int(np_prod(known))
        if len(expected) == 1
        else True
    )
    if not fits:
        shown = "×".join(str(d) for d in expected)
        contract = getattr(model, "contract", None)
        read = ""
        if contract is not None and contract.layout == "nhwc" and contract.source != "signature":
            where = "robmon.toml" if contract.source == "config" else "its tag"
            read = f", read as N×H×W×C as the input contract in {where} says"
        raise ModelIncompatible(
            f"{model.name} takes inputs shaped {shown} (its signature{read}) but {data} is "
            f"{'×'.join(str(d) for d in image_shape)}."
        )


def np_prod(values: tuple[int, ...] | list[int]) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def layout_from_shape(shape: tuple[int, ...] | None) -> str:
    """Input layout of a black box from its signature's tensor shape (batch axis included)."""
    if shape is None or (len(shape) == 4 and shape[1] in (1, 3, 4)):
        return "nchw"
    if len(shape) == 2:
        return "flat"
    if len(shape) == 4 and shape[-1] in (1, 3, 4):
        return "nhwc"
    raise ModelIncompatible(
        f"cannot feed images to a model whose input signature has shape {shape}; "
        "expected (-1, C, H, W), (-1, H, W, C) or (-1, features)."
    )
