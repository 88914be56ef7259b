"""Production records built from the digits test split, as model servers would log them."""

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def png_b64(image: torch.Tensor) -> str:
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def npy_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return base64.b64encode(buffer.getvalue()).decode()


def record(
    image: torch.Tensor | None = None,
    *,
    source: str = "10.0.0.1",
    model: str = "digits-cnn",
    rid: str | None = None,
    ts: str = "2026-11-24T19:00:00Z",
    version: str | None = None,
    inp: dict | None = None,
) -> str:
    data = {
        "ts": ts,
        "source": source,
        "model": model,
        "input": inp if inp is not None else {"array": image.squeeze(0).tolist()},
    }
    if rid is not None:
        data["id"] = rid
    if version is not None:
        data["version"] = version
    return json.dumps(data)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path
