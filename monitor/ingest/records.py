"""One production log line -> a validated Record, or BadRecord with a one-sentence reason.

The format (docs/ARCHITECTURE.md): ``{"id", "ts", "source", "model", "version", "input"}`` with
``input`` holding exactly one of ``array`` (nested lists, C×H×W or H×W in [0, 1]), ``npy_b64``,
``png_b64`` (PNG/JPEG bytes) or ``path`` (an image under the configured input root).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch

from monitor.errors import BadRecord

INPUT_KINDS = ("array", "npy_b64", "png_b64", "path")
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 4_000_000


@dataclass(frozen=True)
class Limits:
    """What a record may cost: line size, decoded pixels, and where ``path`` may point."""

    input_root: Path
    max_line_bytes: int = MAX_LINE_BYTES
    max_pixels: int = MAX_PIXELS


@dataclass
class Record:
    request_id: str | None
    ts: datetime
    source: str
    model: str
    version: str | None
    image: torch.Tensor  # C×H×W float32 in [0, 1]
    sha256: str


def parse_record(line: bytes | str, limits: Limits) -> Record:
    """Validate one JSON line; every problem raises BadRecord with a reason a human can act on."""
    raw = line.encode() if isinstance(line, str) else line
    if len(raw) > limits.max_line_bytes:
        raise BadRecord(
            f"line of {len(raw)} bytes is over the limit of {limits.max_line_bytes} bytes."
        )
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:  # the standard library says where and why
            json.loads(raw)
            reason = "unparseable"
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            reason = str(err)
        raise BadRecord(f"not valid JSON: {reason}.") from None
    if not isinstance(data, dict):
        raise BadRecord(f"a record is a JSON object, not {type(data).__name__}.")
    missing = [k for k in ("ts", "source", "model", "input") if data.get(k) in (None, "")]
    if missing:
        raise BadRecord(f"missing field(s): {', '.join(missing)}.")
    source, model = _text(data, "source"), _text(data, "model")
    version = data.get("version")
    if (version is not None and not isinstance(version, str | int)) or isinstance(version, bool):
        raise BadRecord("version must be a number or an alias.")
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str | int):
        raise BadRecord("id must be a string or a number.")
    image = decode_input(data["input"], limits)
    return Record(
        request_id=None if request_id is None else str(request_id),
        ts=_timestamp(data["ts"]),
        source=source,
        model=model,
        version=None if version is None else str(version),
        image=image,
        sha256=hashlib.sha256(image.numpy().tobytes()).hexdigest(),
    )


def _text(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or len(value) > 255:
        raise BadRecord(f"{key} must be a string of at most 255 characters.")
    return value


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise BadRecord("ts must be an ISO 8601 string such as 2026-11-24T19:00:00Z.")
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise BadRecord(f"ts {value[:40]!r} is not an ISO 8601 time.") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def decode_input(spec: Any, limits: Limits) -> torch.Tensor:
    """The ``input`` object -> C×H×W float32 tensor in [0, 1]."""
    if not isinstance(spec, dict):
        raise BadRecord("input must be an object with one of " + ", ".join(INPUT_KINDS) + ".")
    kinds = [k for k in INPUT_KINDS if k in spec]
    if len(kinds) != 1:
        raise BadRecord("input must hold exactly one of " + ", ".join(INPUT_KINDS) + ".")
    kind = kinds[0]
    if kind == "array":
        array = _nested_list(spec["array"])
    elif kind == "npy_b64":
        array = _npy(_b64(spec["npy_b64"], "npy_b64"))
    elif kind == "png_b64":
        array = _image_bytes(_b64(spec["png_b64"], "png_b64"), limits)
    else:
        array = _image_bytes(_read_under_root(spec["path"], limits), limits)
    return _to_chw(array, limits)


def _nested_list(value: Any) -> np.ndarray:
    if not isinstance(value, list):
        raise BadRecord("input.array must be nested lists of numbers.")
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise BadRecord("input.array is ragged or holds non-numbers.") from None
    return array


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise BadRecord(f"input.{field} must be a base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRecord(f"input.{field} is not valid base64.") from None


def _npy(data: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise BadRecord(f"input.npy_b64 is not a .npy array: {err}.") from None
    if array.dtype == np.uint8:
        return array  # 0–255: ``_to_chw`` scales it
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise BadRecord(f"input.npy_b64 holds {array.dtype}, not numbers.")
    return array.astype(np.float32)


def _image_bytes(data: bytes, limits: Limits) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = limits.max_pixels  # PIL's own bomb guard, as a second line
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > limits.max_pixels:
                raise BadRecord(
                    f"image of {width}×{height} pixels is over the limit of "
                    f"{limits.max_pixels} pixels."
                )
            img.load()
            # uint8 until the tensor: converted once, in torch, with no range to check
            if img.mode in ("1", "L", "I;16", "I", "F"):
                array = np.asarray(img.convert("L"), dtype=np.uint8)[None]
            else:
                array = np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    except BadRecord:
        raise
    except Image.DecompressionBombError:
        raise BadRecord(
            f"the image is over the limit of {limits.max_pixels} pixels (decompression bomb)."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise BadRecord(f"cannot decode the image: {str(err).rstrip('.')}.") from None
    return array


def _read_under_root(value: Any, limits: Limits) -> bytes:
    if not isinstance(value, str) or not value:
        raise BadRecord("input.path must be a non-empty string.")
    root = limits.input_root.resolve()
    path = (root / value).resolve()
    if not path.is_relative_to(root):
        raise BadRecord(f"input.path {value!r} is outside the input root {root}.")
    try:
        size = path.stat().st_size
        if size > limits.max_line_bytes:
            raise BadRecord(f"input.path {value!r} is {size} bytes, over the size limit.")
        return path.read_bytes()
    except BadRecord:
        raise
    except OSError as err:
        raise BadRecord(f"cannot read input.path {value!r}: {err.strerror}.") from None


def _to_chw(array: np.ndarray, limits: Limits) -> torch.Tensor:
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise BadRecord(f"an input image is C×H×W or H×W, not {array.ndim}-dimensional.")
    if array.size == 0:
        raise BadRecord("the input image is empty.")
    if array.shape[1] * array.shape[2] > limits.max_pixels:
        raise BadRecord(f"image of {array.shape[2]}×{array.shape[1]} pixels is over the limit.")
    if array.dtype == np.uint8:  # decoded image bytes: 0–255 by construction
        return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
    low, high = float(array.min()), float(array.max())
    if not (low >= 0.0 and high <= 1.0):  # also False for NaN
        if not np.isfinite(array).all():
            raise BadRecord("the input holds NaN or infinite values.")
        raise BadRecord(f"pixel values must lie in [0, 1], found [{low:.3g}, {high:.3g}].")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
