"""Every kind of bad input becomes a one-sentence BadRecord; every encoding decodes the same."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from monitor.errors import BadRecord
from monitor.ingest.records import Limits, parse_record
from tests.ingest.lines import npy_b64, png_b64, record


@pytest.fixture
def limits(tmp_path: Path) -> Limits:
    (tmp_path / "root").mkdir()
    return Limits(input_root=tmp_path / "root", max_line_bytes=64_000, max_pixels=10_000)


def test_every_encoding_gives_the_same_image(limits, digits) -> None:
    image = (digits.x[0] * 255).round() / 255  # exactly representable in 8 bits
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8)).save(
        limits.input_root / "one.png"
    )
    encodings = [
        {"array": image[0].tolist()},
        {"array": image.tolist()},
        {"npy_b64": npy_b64(image.numpy())},
        {"npy_b64": npy_b64((image.numpy() * 255).round().astype(np.uint8))},
        {"png_b64": png_b64(image)},
        {"path": "one.png"},
    ]
    parsed = [parse_record(record(inp=inp, rid="r1"), limits) for inp in encodings]
    for p in parsed:
        assert p.image.shape == (1, 8, 8)
        assert torch.allclose(p.image, image, atol=1e-6)
    assert len({p.sha256 for p in parsed}) == 1
    first = parsed[0]
    assert (first.source, first.model, first.request_id) == ("10.0.0.1", "digits-cnn", "r1")
    assert first.ts.isoformat() == "2026-11-24T19:00:00+00:00"


def _big_png() -> str:
    return png_b64(torch.zeros(1, 200, 200))


BAD = {
    "malformed JSON": ('{"ts": "2026', "not valid JSON"),
    "not an object": ("[1, 2]", "a record is a JSON object"),
    "missing fields": (
        json.dumps({"ts": "2026-11-24T19:00:00Z"}),
        "missing field(s): source, model, input",
    ),
    "bad time": (record(inp={"array": [[0.1]]}, ts="yesterday"), "not an ISO 8601 time"),
    "two inputs": (record(inp={"array": [[0.1]], "path": "x.png"}), "exactly one of"),
    "ragged array": (record(inp={"array": [[0.1, 0.2], [0.3]]}), "ragged"),
    "4-d array": (record(inp={"array": [[[[0.1]]]]}), "C×H×W or H×W"),
    "NaN": (
        record(inp={"npy_b64": npy_b64(np.full((8, 8), np.nan, np.float32))}),
        "NaN or infinite",
    ),
    "infinite": (
        record(inp={"npy_b64": npy_b64(np.full((8, 8), np.inf, np.float32))}),
        "NaN or infinite",
    ),
    "out of range": (record(inp={"array": [[1.5, 0.1]]}), "must lie in [0, 1]"),
    "negative": (record(inp={"array": [[-0.5, 0.1]]}), "must lie in [0, 1]"),
    "bad base64": (record(inp={"png_b64": "not base64!!"}), "not valid base64"),
    "not an image": (record(inp={"png_b64": "aGVsbG8gd29ybGQ="}), "cannot decode the image"),
    "not npy": (record(inp={"npy_b64": "aGVsbG8gd29ybGQ="}), "not a .npy array"),
    "decompression bomb": (record(inp={"png_b64": _big_png()}), "over the limit of 10000 pixels"),
    "large image": (
        record(inp={"png_b64": png_b64(torch.zeros(1, 110, 110))}),
        "over the limit of 10000 pixels",
    ),
    "outside the root": (record(inp={"path": "../../etc/passwd"}), "outside the input root"),
    "missing file": (record(inp={"path": "nope.png"}), "cannot read input.path"),
    "bad version": (
        json.dumps(
            {
                "ts": "2026-11-24T19:00:00Z",
                "source": "s",
                "model": "m",
                "version": [1],
                "input": {"array": [[0.1]]},
            }
        ),
        "version must be",
    ),
    "huge line": ("x" * 70_000, "over the limit of 64000 bytes"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_sentence(limits, case: str) -> None:
    line, needle = BAD[case]
    with pytest.raises(BadRecord) as info:
        parse_record(line, limits)
    message = str(info.value)
    assert needle in message, message
    assert "\n" not in message and message.endswith(".")
