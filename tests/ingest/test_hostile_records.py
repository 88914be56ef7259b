"""Hostile records (issue 17, items 1, 7, 8): each is one BadRecord with a reason, before it can
cost memory, recursion or a blocked read; and nothing but BadRecord leaves the parser."""

import base64
import io
import json
import os
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from monitor.errors import BadRecord
from monitor.ingest.records import Limits, Record, parse_record
from tests.ingest.lines import npy_b64, png_b64, record


@pytest.fixture
def limits(tmp_path: Path) -> Limits:
    (tmp_path / "root").mkdir(exist_ok=True)
    return Limits(input_root=tmp_path / "root", max_line_bytes=64_000, max_pixels=10_000)


def _npy_claiming(shape: tuple[int, ...], dtype: str = "<f4") -> str:
    """A .npy file whose header claims ``shape`` but holds 16 bytes of data."""
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(16)
    return base64.b64encode(data).decode()


def _image_b64(fmt: str, **options) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buffer, format=fmt, **options)
    return base64.b64encode(buffer.getvalue()).decode()


_EPS = base64.b64encode(
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto showpage\n%%EOF\n"
).decode()

HOSTILE = {
    "deep nesting": (
        '{"ts": "2026-11-24T19:00:00Z", "source": "s", "model": "m", "input": {"array": '
        + "[" * 200_000
        + "]" * 200_000
        + "}}",
        "nested too deeply",
    ),
    "nesting orjson accepts": (
        record(inp={"array": json.loads("[" * 900 + "]" * 900)}),
        "C×H×W or H×W, not 4-dimensional",
    ),
    "ts before year 1 in UTC": (
        record(inp={"array": [[0.1]]}, ts="0001-01-01T00:00:00+05:00"),
        "is out of range",
    ),
    "ts after year 9999 in UTC": (
        record(inp={"array": [[0.1]]}, ts="9999-12-31T23:59:59-05:00"),
        "is out of range",
    ),
    "version too large for the registry": (
        record(inp={"array": [[0.1]]}, version="99999999999999999999999"),
        "version 99999999999999999999… is out of range",
    ),
    "npy header claims 149 GiB": (
        record(inp={"npy_b64": _npy_claiming((1, 200_000, 200_000))}),
        "200000×200000 pixels is over the limit of 10000 pixels",
    ),
    "npy header claims more data than it holds": (
        record(inp={"npy_b64": _npy_claiming((8, 8))}),
        "declares 256 bytes of data but holds 16",
    ),
    "npy of 1-d shape 2**40": (
        record(inp={"npy_b64": _npy_claiming((2**40,))}),
        "not 1-dimensional",
    ),
    "npy of objects": (
        record(inp={"npy_b64": _npy_claiming((2, 2), "|O")}),
        "holds object, not numbers",
    ),
    "array of many channels": (
        record(inp={"array": [[[0.1]]] * 50}),
        "at most 4 channels, not 50",
    ),
    "BMP as png_b64": (
        record(inp={"png_b64": _image_b64("BMP")}),
        "holds BMP, not an accepted image format (PNG, JPEG)",
    ),
    "TIFF as png_b64": (
        record(inp={"png_b64": _image_b64("TIFF")}),
        "holds TIFF, not an accepted image format (PNG, JPEG)",
    ),
    "GIF as png_b64": (
        record(inp={"png_b64": _image_b64("GIF")}),
        "holds GIF, not an accepted image format (PNG, JPEG)",
    ),
    "EPS as png_b64": (
        record(inp={"png_b64": _EPS}),
        "holds EPS, not an accepted image format (PNG, JPEG)",
    ),
}


@pytest.mark.timeout(60, method="thread")
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_record_is_one_bad_record(limits, case: str) -> None:
    line, needle = HOSTILE[case]
    started = time.perf_counter()
    with pytest.raises(BadRecord) as info:
        parse_record(line, Limits(limits.input_root, 4_000_000, limits.max_pixels))
    message = str(info.value)
    assert needle in message, message
    assert "\n" not in message and message.endswith(".")
    assert time.perf_counter() - started < 5  # refused from the header, not by trying


def test_only_png_and_jpeg_are_decoded(limits) -> None:
    for inp in ({"png_b64": _image_b64("PNG")}, {"png_b64": _image_b64("JPEG", quality=100)}):
        parsed = parse_record(record(inp=inp), limits)
        assert parsed.image.shape == (3, 8, 8)
        assert torch.allclose(parsed.image, torch.full((3, 8, 8), 128 / 255), atol=2 / 255)
    message = str(_refusal(record(inp={"png_b64": _image_b64("BMP")}), limits))
    assert message == "input.png_b64 holds BMP, not an accepted image format (PNG, JPEG)."


def test_path_inputs_decode_png_only(limits) -> None:
    root = limits.input_root
    (root / "fine.png").write_bytes(base64.b64decode(_image_b64("PNG")))
    (root / "disguised.png").write_bytes(base64.b64decode(_image_b64("TIFF")))
    assert parse_record(record(inp={"path": "fine.png"}), limits).image.shape == (3, 8, 8)
    assert str(_refusal(record(inp={"path": "disguised.png"}), limits)) == (
        "input.path 'disguised.png' holds TIFF, not an accepted image format (PNG, JPEG)."
    )


@pytest.mark.timeout(20, method="thread")
def test_a_fifo_under_the_input_root_is_refused_without_blocking(limits) -> None:
    os.mkfifo(limits.input_root / "pipe.png")  # no writer: an open() for reading would block
    (limits.input_root / "folder").mkdir()
    started = time.perf_counter()
    assert str(_refusal(record(inp={"path": "pipe.png"}), limits)) == (
        "input.path 'pipe.png' is a FIFO, not a regular file: only regular files are read."
    )
    assert "is a directory, not a regular file" in str(
        _refusal(record(inp={"path": "folder"}), limits)
    )
    assert time.perf_counter() - started < 5


def _refusal(line: str, limits: Limits) -> BadRecord:
    with pytest.raises(BadRecord) as info:
        parse_record(line, limits)
    return info.value


# -- pentest 17, F5: leniencies of the parser ---------------------------------------------------


def _npy_with_header(header: str) -> str:
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode()
    return base64.b64encode(data).decode()


_GOOD = record(inp={"array": [[0.5, 0.25], [0.0, 1.0]]}, rid="r1")
_PNG = base64.b64decode(_image_b64("PNG"))

LENIENT = {
    "booleans as pixels": (
        record(inp={"array": [[True] * 8] * 8}),
        "input.array holds true or false, not numbers.",
    ),
    "a boolean among numbers": (
        record(inp={"array": [[0.5, 0.25], [False, 1.0]]}),
        "input.array holds true or false, not numbers.",
    ),
    "booleans in a C×H×W array": (
        record(inp={"array": [[[0.5, True]]]}),
        "input.array holds true or false, not numbers.",
    ),
    "booleans under a key spelled with an escape, 'array' quoted after them": (
        '{"input": {"arr\\u0061y": [[true, false]]}, "ts": "2026-11-24T19:00:00Z", '
        '"source": "array", "model": "m"}',
        "input.array holds true or false, not numbers.",
    ),
    "booleans with the input first": (
        '{"input": {"array": [[0.5, true]]}, "ts": "2026-11-24T19:00:00Z", "source": "s", '
        '"model": "m"}',
        "input.array holds true or false, not numbers.",
    ),
    "a repeated top-level key": (
        _GOOD[:-1] + ', "model": "digits-logreg"}',
        "the record repeats the key 'model': each key appears once.",
    ),
    "a repeated key in input": (
        _GOOD.replace('"input": {', '"input": {"array": [[0.0]], '),
        "the record repeats the key 'array': each key appears once.",
    ),
    "a repeated key spelled with an escape": (
        _GOOD[:-1] + ', "mod\\u0065l": "digits-logreg"}',
        "the record repeats the key 'model': each key appears once.",
    ),
    "a ts with a 10,000-digit fraction": (
        record(inp={"array": [[0.5]]}, ts="2026-12-07T15:02:21." + "9" * 10_000 + "Z"),
        "ts '2026-12-07T15:02:21.999999999999999999999…' is not an ISO 8601 time of at most 64 "
        "printable ASCII characters.",
    ),
    "a ts ending in NUL": (
        record(inp={"array": [[0.5]]}, ts="2026-11-24T19:00:00Z\x00"),
        "ts '2026-11-24T19:00:00Z\\x00' is not an ISO 8601 time of at most 64 printable ASCII "
        "characters.",
    ),
    "a truncated PNG": (
        record(inp={"png_b64": base64.b64encode(_PNG[:40]).decode()}),
        "cannot decode the image in input.png_b64: it is not a complete PNG or JPEG image.",
    ),
    "an npy header that is code": (
        record(inp={"npy_b64": _npy_with_header("__import__('os').system('true')")}),
        "input.npy_b64 is not a .npy array: its header is not a Python dict literal.",
    ),
    "an integer of 5000 digits": (
        _GOOD[:-1] + ', "n": ' + "9" * 5000 + "}",
        "not valid JSON: a number of more than 4300 digits.",
    ),
}


@pytest.mark.parametrize("case", list(LENIENT))
def test_what_the_parser_let_through_or_leaked_is_one_plain_sentence(limits, case: str) -> None:
    line, reason = LENIENT[case]
    assert str(_refusal(line, Limits(limits.input_root, 4_000_000, limits.max_pixels))) == reason


def test_objects_in_lists_and_unrepeated_keys_still_parse(limits) -> None:
    """Keys are compared per object: the same key in two objects is no repeat."""
    line = _GOOD[:-1] + ', "extra": [{"model": 1, "id": 2}, {"model": 3}], "x": {"ts": 1}}'
    assert parse_record(line, limits).request_id == "r1"
    assert parse_record(_GOOD.replace('"r1"', '"a\\"b\\\\"'), limits).request_id == 'a"b\\'
    assert parse_record(record(inp={"array": [[0, 1], [1, 0]]}), limits).image.sum() == 2


def test_an_opaque_grey_and_alpha_png_is_grey(limits) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8), 77, np.uint8)).convert("LA").save(buffer, format="PNG")
    image = parse_record(
        record(inp={"png_b64": base64.b64encode(buffer.getvalue()).decode()}), limits
    ).image
    assert image.shape == (1, 8, 8)
    assert torch.allclose(image, torch.full((1, 8, 8), 77 / 255))


# -- property: anything in, a Record or BadRecord out -----------------------------------------

_NOW = datetime.now(UTC)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)
_pixels = st.floats(min_value=-0.5, max_value=1.5) | st.just(float("nan"))
_arrays = st.integers(1, 3).flatmap(
    lambda ndim: st.lists(st.integers(0, 5), min_size=ndim, max_size=ndim).flatmap(
        lambda shape: _nested(shape, _pixels)
    )
)
_odd_ts = st.sampled_from(
    [
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-05:00",
        "0000-00-00",
        "2026-13-01T00:00:00Z",
        "2026-11-24T19:00:00+24:00",
        "",
        "T",
        (_NOW - timedelta(days=3)).isoformat(),
    ]
)
_ts = _odd_ts | st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda t: t.isoformat()),
    st.datetimes().map(lambda t: t.isoformat() + st_offset_suffix(t)),
    st.text(max_size=40),
    _json,
)


def st_offset_suffix(value: datetime) -> str:
    return "Z" if value.second % 2 else "+14:00"


def _nested(shape: list[int], element):
    if len(shape) == 1:
        return st.lists(element, min_size=shape[0], max_size=shape[0])
    return st.lists(_nested(shape[1:], element), min_size=shape[0], max_size=shape[0])


_b64_bytes = st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode())
_npy = st.sampled_from(
    [_npy_claiming((1, 200_000, 200_000)), _npy_claiming((2, 2)), _npy_claiming((3,), "<c8")]
) | st.builds(
    lambda shape, dtype: npy_b64(np.zeros(shape, dtype)),
    st.lists(st.integers(0, 6), max_size=4).map(tuple),
    st.sampled_from(["float32", "float64", "uint8", "int64", "bool", "complex64", "float16"]),
)
_valid_inputs = st.sampled_from(
    [
        {"array": [[0.5, 0.25]]},
        {"npy_b64": npy_b64(np.full((1, 2, 2), 0.5, np.float32))},
        {"png_b64": png_b64(torch.full((3, 2, 2), 0.5))},
    ]
)
_inputs = _valid_inputs | st.one_of(  # a valid input half the time: the rest is checked too
    st.fixed_dictionaries({"array": _arrays | _json}),
    st.fixed_dictionaries({"npy_b64": _npy | _b64_bytes | _json}),
    st.fixed_dictionaries({"png_b64": _b64_bytes | st.text(max_size=30) | _json}),
    st.fixed_dictionaries({"path": st.text(max_size=30) | _json}),
    st.dictionaries(
        st.sampled_from(["array", "npy_b64", "png_b64", "path", "x"]), _json, max_size=3
    ),
    _json,
)
_records = st.fixed_dictionaries(
    {
        "ts": _ts,
        "source": st.text(max_size=10) | _json,
        "model": st.just("m") | _json,
        "input": _inputs,
    },
    optional={"id": _json, "version": _json, "extra": _json},
)
_PROPERTY = settings(
    max_examples=250,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _record_or_bad_record(line: bytes | str, limits: Limits) -> None:
    try:
        parsed = parse_record(line, limits)
    except BadRecord as err:
        message = str(err)
        assert message and "\n" not in message, message
        assert " object at 0x" not in message and "sys." not in message, message
        return
    assert isinstance(parsed, Record)
    assert parsed.image.ndim == 3 and parsed.image.dtype == torch.float32
    assert float(parsed.image.min()) >= 0.0 and float(parsed.image.max()) <= 1.0


_bytes = st.binary(max_size=2_000) | st.builds(
    lambda opener, n, tail: opener * n + tail,
    st.sampled_from([b"[", b'{"a":', b'[{"b":', b'{"input": {"array": ']),
    st.integers(1, 5_000),
    st.binary(max_size=50),
)


@_PROPERTY
@given(_bytes)
def test_any_bytes_give_a_record_or_bad_record(limits, data: bytes) -> None:
    _record_or_bad_record(data, limits)


@_PROPERTY
@given(_records)
@example(
    {"ts": "0001-01-01T00:00:00+05:00", "source": "s", "model": "m", "input": {"array": [[1]]}}
)
@example(
    {"ts": "9999-12-31T23:59:59-05:00", "source": "s", "model": "m", "input": {"array": [[1]]}}
)
def test_any_json_record_gives_a_record_or_bad_record(limits, data: dict) -> None:
    _record_or_bad_record(json.dumps(data, allow_nan=True), limits)


@_PROPERTY
@given(_json, st.integers(1, 3000))
def test_any_json_value_and_any_nesting_give_a_record_or_bad_record(limits, value, depth) -> None:
    _record_or_bad_record(json.dumps(value, allow_nan=True), limits)
    _record_or_bad_record(
        '{"ts": "2026-11-24T19:00:00Z", "source": "s", "model": "m", "input": {"array": '
        + "[" * depth
        + "0.5"
        + "]" * depth
        + "}}",
        limits,
    )
