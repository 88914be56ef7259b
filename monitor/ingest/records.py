"""One production log line -> a validated Record, or BadRecord with a one-sentence reason.

The format (docs/ARCHITECTURE.md): ``{"id", "ts", "source", "model", "version", "input"}`` with
``input`` holding exactly one of ``array`` (nested lists, C×H×W or H×W in [0, 1]), ``npy_b64``,
``png_b64`` (PNG/JPEG bytes) or ``path`` (an image under the configured input root).

Hostile input is refused before it costs anything: the pixel limit is checked against the
declared shape (a list's, a .npy header's, an image header's) before any array is allocated;
only PNG and JPEG reach an image decoder; ``path`` reads regular files only (a FIFO would block).
Every problem raises BadRecord, nothing else (a property-based test holds the parser to it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import stat
import struct
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monitor.errors import BadRecord, quoted
from monitor.ingest import fields, jsonl
from monitor.ingest.fields import canonical_version
from monitor.ingest.sources import not_regular

INPUT_KINDS = ("array", "npy_b64", "png_b64", "path")
MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 4_000_000
MAX_CHANNELS = 4  # C of C×H×W: grey, RGB, RGBA
IMAGE_FORMATS = ("PNG", "JPEG")  # the only decoders an image input reaches
# magic bytes of formats refused by name (a lookup, not a decoder: nothing else is parsed)
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"P1", "PBM"),
    (b"P4", "PBM"),
    (b"P2", "PGM"),
    (b"P5", "PGM"),
    (b"P3", "PPM"),
    (b"P6", "PPM"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"icns", "ICNS"),
)


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
    guard_verdict: str | None = None  # what an inline guard answered (fields.guard_verdict)
    guard_reason: str | None = None


def parse_record(line: bytes | str, limits: Limits) -> Record:
    """Validate one JSON line; every problem raises BadRecord with a reason a human can act on
    (the named fields' rules: ``monitor.ingest.fields``)."""
    raw = line.encode() if isinstance(line, str) else line
    if len(raw) > limits.max_line_bytes:
        raise BadRecord(
            f"line of {len(raw)} bytes is over the limit of {limits.max_line_bytes} bytes."
        )
    data = jsonl.load(raw)
    if not isinstance(data, dict):
        raise BadRecord(f"a record is a JSON object, not {type(data).__name__}.")
    missing = [k for k in ("ts", "source", "model", "input") if data.get(k) in (None, "")]
    if missing:
        raise BadRecord(f"missing field(s): {', '.join(missing)}.")
    source = fields.text_field(data, "source")
    try:
        model = fields.model_name(data)
    except BadRecord as err:  # the sender is known: the dead letter keeps it
        raise BadRecord(str(err), source) from None
    try:
        return _named_record(data, source, model, limits, raw)
    except BadRecord as err:  # the sender is known: the dead letter keeps it
        raise BadRecord(str(err), source, model) from None


def _named_record(
    data: dict[str, Any], source: str, model: str, limits: Limits, raw: bytes
) -> Record:
    version = canonical_version(data.get("version"))
    request_id = fields.request_id(data)
    spec = data["input"]
    booleans = (
        isinstance(spec, dict)
        and "array" in spec
        and jsonl.may_hold_booleans_after(raw, b'"array"')
    )
    image = decode_input(spec, limits, booleans=booleans)
    verdict, reason = fields.guard_verdict(data)
    return Record(
        request_id=request_id,
        ts=fields.timestamp(data["ts"]),
        source=source,
        model=model,
        version=version,
        image=image,
        sha256=hashlib.sha256(image.numpy().tobytes()).hexdigest(),
        guard_verdict=verdict,
        guard_reason=reason,
    )


def decode_input(spec: Any, limits: Limits, *, booleans: bool = True) -> torch.Tensor:
    """The ``input`` object -> C×H×W float32 tensor in [0, 1]. ``booleans=False``: the line
    holds no ``true`` or ``false``, so nested lists need not be searched for them."""
    if not isinstance(spec, dict):
        raise BadRecord("input must be an object with one of " + ", ".join(INPUT_KINDS) + ".")
    kinds = [k for k in INPUT_KINDS if k in spec]
    if len(kinds) != 1:
        raise BadRecord("input must hold exactly one of " + ", ".join(INPUT_KINDS) + ".")
    kind = kinds[0]
    if kind == "array":
        array = _nested_list(spec["array"], limits, booleans)
    elif kind == "npy_b64":
        array = _npy(_b64(spec["npy_b64"], "npy_b64"), limits)
    elif kind == "png_b64":
        array = _image_bytes(_b64(spec["png_b64"], "png_b64"), limits, "input.png_b64")
    else:
        path = spec["path"]
        array = _image_bytes(_read_under_root(path, limits), limits, f"input.path {quoted(path)}")
    return _to_chw(array, limits)


def check_shape(shape: tuple[int, ...], limits: Limits) -> None:
    """A declared C×H×W or H×W shape within the pixel limit (before anything is allocated)."""
    if len(shape) not in (2, 3):
        raise BadRecord(f"an input image is C×H×W or H×W, not {len(shape)}-dimensional.")
    height, width = shape[-2], shape[-1]
    if height * width > limits.max_pixels:
        raise BadRecord(
            f"image of {width}×{height} pixels is over the limit of {limits.max_pixels} pixels."
        )
    if len(shape) == 3 and shape[0] > MAX_CHANNELS:
        raise BadRecord(f"an input image has at most {MAX_CHANNELS} channels, not {shape[0]}.")


def _list_shape(value: list[Any]) -> tuple[int, ...]:
    """The shape nested lists claim, read along their first elements (at most 4 levels)."""
    shape = []
    while isinstance(value, list) and len(shape) < 4:
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def _nested_list(value: Any, limits: Limits, booleans: bool) -> np.ndarray:
    if not isinstance(value, list):
        raise BadRecord("input.array must be nested lists of numbers.")
    check_shape(_list_shape(value), limits)
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise BadRecord("input.array is ragged or holds non-numbers.") from None
    check_shape(array.shape, limits)  # a ragged list may hide deeper levels
    if booleans and _holds_booleans(value):  # numpy reads true and false as 1.0 and 0.0
        raise BadRecord("input.array holds true or false, not numbers.")
    return array


def _holds_booleans(value: list[Any]) -> bool:
    """Whether nested lists hold a bool anywhere (the type of each element, at C speed)."""
    rows = [value]
    while rows:
        kinds = set(map(type, row := rows.pop()))
        if bool in kinds:
            return True
        if list in kinds:
            rows.extend(item for item in row if type(item) is list)
    return False


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise BadRecord(f"input.{field} must be a base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRecord(f"input.{field} is not valid base64.") from None


def _npy_header(data: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) from a .npy header, without reading the array."""
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
        (3, 0): np.lib.format.read_array_header_2_0,  # as 2.0, with a UTF-8 header
    }
    handle = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(handle)
        if version not in readers:
            raise ValueError(f"unsupported .npy version {version[0]}.{version[1]}")
        shape, _, dtype = readers[version](handle)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, OverflowError) as err:
        raise BadRecord(f"input.npy_b64 is not a .npy array: {_npy_reason(err)}.") from None
    return tuple(shape), dtype, handle.tell()


# numpy's words for a bad .npy header -> plain ones (numpy's quote the header, or name an AST
# node's repr, "<ast.Call object at 0x...>", or its own options, "max_header_size")
_NPY_REASONS = (
    ("malformed node or string", "its header is not a Python dict literal"),
    ("Cannot parse header", "its header is not a Python dict literal"),
    ("Header is not a dictionary", "its header is not a Python dict literal"),
    ("Header does not contain the correct keys", "its header needs descr, fortran_order, shape"),
    ("shape is not valid", "its header's shape is not a tuple of integers"),
    ("fortran_order is not a valid bool", "its header's fortran_order is not True or False"),
    ("descr is not a valid dtype descriptor", "its header's descr is not a data type"),
    ("Header info length", "its header is longer than numpy reads safely"),
)


def _npy_reason(err: BaseException) -> str:
    text = str(err)
    plain = next((reason for start, reason in _NPY_REASONS if text.startswith(start)), None)
    return plain or (text.splitlines()[0].rstrip(".") if text else type(err).__name__)


def _npy(data: bytes, limits: Limits) -> np.ndarray:
    shape, dtype, offset = _npy_header(data)
    if dtype.kind not in "iuf":  # bool, complex, strings, objects, times, records
        raise BadRecord(f"input.npy_b64 holds {dtype}, not numbers.")
    check_shape(shape, limits)  # before np.load allocates what the header claims
    needed = math.prod(shape) * dtype.itemsize
    if needed != len(data) - offset:
        raise BadRecord(
            f"input.npy_b64 declares {needed} bytes of data but holds {len(data) - offset}."
        )
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise BadRecord(f"input.npy_b64 is not a .npy array: {str(err).rstrip('.')}.") from None
    if array.dtype == np.uint8:
        return array  # 0–255: ``_to_chw`` scales it
    return array.astype(np.float32)


def image_format(data: bytes) -> str | None:
    """The image format the bytes start with (by magic bytes only), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _image_bytes(data: bytes, limits: Limits, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    found = image_format(data)
    if found is None:
        raise BadRecord(
            f"cannot decode the image: {what} is not a {' or '.join(IMAGE_FORMATS)} image."
        )
    if found not in IMAGE_FORMATS:
        raise BadRecord(
            f"{what} holds {found}, not an accepted image format ({', '.join(IMAGE_FORMATS)})."
        )
    try:
        with Image.open(io.BytesIO(data), formats=list(IMAGE_FORMATS)) as img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > limits.max_pixels:
                raise BadRecord(
                    f"image of {width}×{height} pixels is over the limit of "
                    f"{limits.max_pixels} pixels."
                )
            img.load()
            array = _pixels(img)
    except BadRecord:
        raise
    except Image.DecompressionBombError:
        raise BadRecord(
            f"the image is over the limit of {limits.max_pixels} pixels (decompression bomb)."
        ) from None
    except (UnidentifiedImageError, struct.error):  # Pillow's message names its BytesIO's repr
        raise BadRecord(
            f"cannot decode the image in {what}: it is not a complete PNG or JPEG image."
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        raise BadRecord(f"cannot decode the image in {what}: {_image_reason(err)}.") from None
    return array


def _image_reason(err: BaseException) -> str:
    text = str(err).splitlines()[0].rstrip(".") if str(err) else type(err).__name__
    if "MAX_TEXT_CHUNK" in text or "MAX_TEXT_MEMORY" in text:  # Pillow's limits, by name
        return "its text chunks decompress to more than the limit"
    return text


def _pixels(img: Any) -> np.ndarray:
    """A decoded image as uint8 C×H×W (converted once, in torch, with no range to check):
    grey modes as L, others as RGB; an image with transparent pixels keeps its alpha channel
    (LA or RGBA: a conversion rule composites it over white, ``monitor.ingest.convert``), an
    opaque one drops it as before."""
    if img.mode in ("1", "L", "I;16", "I", "F"):
        return np.asarray(img.convert("L"), dtype=np.uint8)[None]
    if img.mode in ("LA", "La", "RGBA", "RGBa", "PA") or "transparency" in img.info:
        mode = "LA" if img.mode in ("LA", "La") else "RGBA"
        array = np.asarray(img.convert(mode), dtype=np.uint8).transpose(2, 0, 1)
        if (array[-1] < 255).any():
            return array
        if mode == "LA":  # opaque grey: L
            return np.ascontiguousarray(array[:1])
    return np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def _read_under_root(value: Any, limits: Limits) -> bytes:
    """The bytes of a regular file under the input root (a FIFO, device or socket is refused
    before it is read: opening is non-blocking, and the type is checked on the open file)."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise BadRecord("input.path must be a non-empty string.")
    root = limits.input_root.resolve()
    try:
        path = (root / value).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop, a name too long
        why = err.strerror if isinstance(err, OSError) and err.strerror else "a symlink loop"
        raise BadRecord(f"cannot read input.path {quoted(value)}: {why}.") from None
    if not path.is_relative_to(root):
        raise BadRecord(f"input.path {quoted(value)} is outside the input root {root}.")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as err:
        raise BadRecord(f"cannot read input.path {quoted(value)}: {err.strerror}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadRecord(not_regular(f"input.path {quoted(value)}", info.st_mode))
        if info.st_size > limits.max_line_bytes:
            raise BadRecord(
                f"input.path {quoted(value)} is {info.st_size} bytes, over the size limit."
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read(limits.max_line_bytes + 1)
    except OSError as err:
        raise BadRecord(f"cannot read input.path {quoted(value)}: {err.strerror}.") from None
    finally:
        os.close(fd)


def _to_chw(array: np.ndarray, limits: Limits) -> torch.Tensor:
    if array.ndim == 2:
        array = array[None]
    check_shape(array.shape, limits)
    if array.size == 0:
        raise BadRecord("the input image is empty.")
    if array.dtype == np.uint8:  # decoded image bytes: 0–255 by construction
        return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)
    low, high = float(array.min()), float(array.max())
    if not (low >= 0.0 and high <= 1.0):  # also False for NaN
        if not np.isfinite(array).all():
            raise BadRecord("the input holds NaN or infinite values.")
        raise BadRecord(f"pixel values must lie in [0, 1], found [{low:.3g}, {high:.3g}].")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
