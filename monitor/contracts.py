"""Input contracts: how a registry model takes pixels, and the adapters that keep robmon in
pixel space ([0, 1] floats shaped N×C×H×W, ARCHITECTURE.md "Pixel space").

A contract is declared by the model version tag ``robustness.input`` (a JSON object) or by the
robmon.toml table ``[input."NAME"]``, with the keys ``scale`` (``unit`` for [0, 1], ``uint8`` for
0–255), ``layout`` (``nchw`` or ``nhwc``), ``mean`` and ``std`` (per channel, in [0, 1] units),
``size`` ([H, W]) and ``channels`` (1 or 3). What is not declared is inferred from the MLflow
signature where it can be (a uint8 tensor spec, a channels-last shape); the configuration wins
over the tag, the tag over the signature. Only torch and numpy are imported here.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from monitor.errors import ConfigError, ModelIncompatible

CONTRACT_TAG = "robustness.input"
SCALES = ("unit", "uint8")
LAYOUTS = ("nchw", "nhwc")
KEYS = ("scale", "layout", "mean", "std", "size", "channels")
SOURCES = ("config", "tag", "signature", "default")  # strongest first


@dataclass(frozen=True)
class InputContract:
    """What a model's input looks like; ``source`` says where the strongest part came from."""

    scale: str = "unit"
    layout: str = "nchw"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    size: tuple[int, int] | None = None
    channels: int | None = None
    source: str = "default"

    @property
    def is_identity(self) -> bool:
        """True when the model takes pixel space as is (nothing to adapt)."""
        return (
            self.scale == "unit"
            and self.layout == "nchw"
            and self.mean is None
            and self.std is None
        )

    def text(self) -> str:
        """One line for reports, e.g. ``uint8 0–255, N×H×W×C, 1×8×8 (from the signature)``."""
        parts = ["uint8 0–255" if self.scale == "uint8" else "[0, 1]"]
        parts.append("N×H×W×C" if self.layout == "nhwc" else "N×C×H×W")
        if self.mean is not None or self.std is not None:
            parts.append(f"mean {_numbers(self.mean or (0.0,))} std {_numbers(self.std or (1.0,))}")
        if self.size is not None:
            shape = (self.channels or "C", *self.size)
            parts.append("×".join(str(d) for d in shape))
        where = {
            "config": "robmon.toml",
            "tag": f"tag {CONTRACT_TAG}",
            "signature": "the MLflow signature",
            "default": "default",
        }[self.source]
        return f"{', '.join(parts)} ({where if self.source == 'default' else 'from ' + where})"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for run_info and JSON output."""
        return {
            "scale": self.scale,
            "layout": self.layout,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "size": list(self.size) if self.size is not None else None,
            "channels": self.channels,
            "source": self.source,
            "text": self.text(),
        }

    def key(self) -> str | None:
        """Canonical JSON of what changes the model's input (not where it was declared), or
        None for plain pixels: part of an audit's configuration hash."""
        if self.is_identity:
            return None
        fields = {k: v for k, v in self.as_dict().items() if k not in ("source", "text")}
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    def pixel_shape(self, shape: tuple[int, ...] | None) -> tuple[int, ...] | None:
        """The pixel-space shape (C, H, W) of a signature's shape without the batch axis; with
        no signature, the contract's channels and size (when both are declared)."""
        if shape is None and self.channels is not None and self.size is not None:
            return (self.channels, *self.size)
        if shape is not None and len(shape) == 3 and self.layout == "nhwc":
            return (shape[2], shape[0], shape[1])
        return shape


def parse_contract(value: Any, where: str, source: str) -> dict[str, Any]:
    """Validated fields of a declared contract (a dict, or JSON text for a tag).

    ``where`` names the declaration in errors (e.g. ``tag robustness.input of digits/1``).
    """
    error = ModelIncompatible if source == "tag" else ConfigError
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise error(
                f"{where} is not valid JSON ({err.msg}); write an object such as "
                '{"scale": "uint8", "layout": "nhwc"}.'
            ) from None
    if not isinstance(value, dict):
        raise error(f"{where} must be an object with the keys {', '.join(KEYS)}.")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise error(f"{where} has an unknown key {unknown[0]!r} (known: {', '.join(KEYS)}).")
    fields: dict[str, Any] = {}
    for key, choices in (("scale", SCALES), ("layout", LAYOUTS)):
        if key in value:
            if value[key] not in choices:
                raise error(f"{where}: {key} must be {' or '.join(choices)}, not {value[key]!r}.")
            fields[key] = value[key]
    if "channels" in value:
        if value["channels"] not in (1, 3) or isinstance(value["channels"], bool):
            raise error(f"{where}: channels must be 1 or 3, not {value['channels']!r}.")
        fields["channels"] = value["channels"]
    if "size" in value:
        size = value["size"]
        if not (
            isinstance(size, list | tuple)
            and len(size) == 2
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size)
        ):
            raise error(f"{where}: size must be [height, width] in pixels, not {size!r}.")
        fields["size"] = (int(size[0]), int(size[1]))
    for key in ("mean", "std"):
        if key in value:
            fields[key] = _per_channel(value[key], key, where, error)
    _check_normalisation(fields, where, error)
    return fields


def _per_channel(value: Any, key: str, where: str, error: type[Exception]) -> tuple[float, ...]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    if not (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise error(f"{where}: {key} must be a list of numbers, one per channel, not {value!r}.")
    return tuple(float(v) for v in value)


def _check_normalisation(fields: dict[str, Any], where: str, error: type[Exception]) -> None:
    """mean and std: one value per channel, std strictly positive."""
    channels = fields.get("channels")
    for key in ("mean", "std"):
        values = fields.get(key)
        if values is None:
            continue
        if channels is not None and len(values) not in (1, channels):
            raise error(
                f"{where}: {key} has {len(values)} values but the input has {channels} channel"
                f"{'s' if channels > 1 else ''}."
            )
        if key == "std" and any(not v > 0 for v in values):
            raise error(f"{where}: every std must be positive, not {list(values)}.")
    mean, std = fields.get("mean"), fields.get("std")
    if mean and std and 1 not in (len(mean), len(std)) and len(mean) != len(std):
        raise error(f"{where}: mean has {len(mean)} values but std has {len(std)}.")


def from_signature(shape: tuple[int, ...] | None, dtype: str) -> dict[str, Any]:
    """What an MLflow tensor signature says (shape without the batch axis): a uint8 spec means
    0–255, a (H, W, C) shape with C of 1 or 3 means channels-last."""
    fields: dict[str, Any] = {}
    if dtype == "uint8":
        fields["scale"] = "uint8"
    if shape is not None and len(shape) == 3 and all(d not in (-1, None) for d in shape):
        if shape[0] in (1, 3):
            fields.update(layout="nchw", channels=int(shape[0]), size=(shape[1], shape[2]))
        elif shape[-1] in (1, 3):
            fields.update(layout="nhwc", channels=int(shape[2]), size=(shape[0], shape[1]))
    return fields


def resolve_contract(declared: list[tuple[str, dict[str, Any], str]]) -> InputContract:
    """The contract from (source, fields, where) parts, weakest first (signature, tag,
    config): a stronger part wins key by key; mean and std are checked against the channels
    of the whole, naming the declaration that gave them."""
    fields: dict[str, Any] = {}
    source, normalised_by = "default", None
    for name, part, where in declared:
        if part:
            fields.update(part)
            source = name
            if "mean" in part or "std" in part:
                normalised_by = (name, where)
    if normalised_by is not None:
        name, where = normalised_by
        error = ConfigError if name == "config" else ModelIncompatible
        _check_normalisation(fields, where, error)
        if fields.get("scale") == "uint8":
            raise error(
                f"{where}: mean and std cannot go with scale uint8 (a model normalising 0–255 "
                "pixels takes (255·x − m) / s = (x − m/255) / (s/255)): give mean and std in "
                "[0, 1] units with scale unit."
            )
    return replace(InputContract(**fields), source=source)


def _numbers(values: tuple[float, ...]) -> str:
    return "/".join(f"{v:g}" for v in values)


class PixelAdapter(nn.Module):
    """A differentiable wrapper: takes [0, 1] N×C×H×W, feeds the module what its contract says.

    (x - mean) / std, then ×255 for uint8 models (rounded with a straight-through estimator
    when the module's signature is uint8, so that gradients still flow), then channels-last.
    """

    def __init__(
        self, module: nn.Module, contract: InputContract, round_to_integers: bool = False
    ) -> None:
        super().__init__()
        self.module = module
        self.contract = contract
        self.round_to_integers = round_to_integers
        self.register_buffer("mean", _channel_tensor(contract.mean, 0.0))
        self.register_buffer("std", _channel_tensor(contract.std, 1.0))
        self.training = False  # registry models are loaded in eval mode

    def train(self, mode: bool = True) -> PixelAdapter:
        """Switch the wrapped module where it allows (torch.export graphs refuse)."""
        self.training = mode
        with contextlib.suppress(NotImplementedError):
            self.module.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_model_input(x, self.contract, self.mean, self.std, self.round_to_integers)
        return self.module(x)


def to_model_input(
    x: torch.Tensor,
    contract: InputContract,
    mean: torch.Tensor,
    std: torch.Tensor,
    rounding: bool = False,
) -> torch.Tensor:
    """Pixel-space N×C×H×W -> the model's input (differentiable; rounding is straight-through)."""
    if contract.mean is not None or contract.std is not None:
        x = (x - mean.to(x.dtype)) / std.to(x.dtype)
    if contract.scale == "uint8":
        x = x * 255.0
        if rounding:
            x = x + (x.round().clamp(0, 255) - x).detach()
    if contract.layout == "nhwc":
        x = x.permute(0, 2, 3, 1)
    return x


def to_model_array(x: np.ndarray, contract: InputContract, dtype: np.dtype) -> np.ndarray:
    """The numpy form of ``to_model_input`` for black boxes; uint8 inputs are rounded and cast."""
    x = x.astype(np.float32, copy=False)
    if contract.mean is not None or contract.std is not None:
        mean = np.asarray(contract.mean or (0.0,), dtype=np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(contract.std or (1.0,), dtype=np.float32).reshape(1, -1, 1, 1)
        x = (x - mean) / std
    if contract.scale == "uint8":
        x = x * 255.0
    if contract.layout == "nhwc":
        x = x.transpose(0, 2, 3, 1)
    if np.dtype(dtype) == np.uint8:
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return x.astype(dtype, copy=False)


def takes_floats(
    module: torch.nn.Module, shape: tuple[int, ...] | None, device: torch.device
) -> bool:
    """Whether a module declared uint8 runs on float inputs (whole numbers 0–255)."""
    if shape is None or len(shape) != 3 or any(d in (-1, None) for d in shape):
        return True  # nothing to probe with: the audit says so if it fails
    try:
        with torch.no_grad():
            module(torch.zeros(1, *shape, device=device))
    except (RuntimeError, TypeError, AssertionError, ValueError):
        return False
    return True


def _channel_tensor(values: tuple[float, ...] | None, fill: float) -> torch.Tensor:
    return torch.tensor(values if values is not None else (fill,), dtype=torch.float32).view(
        1, -1, 1, 1
    )
