"""One request row of a guarded model -> (source, id, C×H×W image), by the production record's
rules (``ingest.fields``, ``ingest.records``), so that a row the guard takes is a record the
ingester takes. ``path`` inputs are refused: a request names no file on the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from monitor.errors import BadRecord
from monitor.ingest import fields
from monitor.ingest.records import Limits, decode_input

ROW_INPUTS = ("array", "npy_b64", "png_b64")
_LIMITS = Limits(input_root=Path("/nonexistent-guard-root"))


def read_row(row: dict[str, Any]) -> tuple[str, str | None, torch.Tensor]:
    """(source, the client's id, image) of a row; BadRecord with the reason otherwise."""
    if not isinstance(row, dict):
        raise BadRecord("a request row is an object with a source and an input.")
    if row.get("source") in (None, ""):
        raise BadRecord("missing field: source.")
    source = fields.text_field(row, "source")
    client_id = fields.request_id(row)
    spec = row_input(row)
    if isinstance(spec, dict) and "path" in spec:
        raise BadRecord("input.path is refused here: send array, npy_b64 or png_b64.")
    return source, client_id, decode_input(spec, _LIMITS)


def row_input(row: dict[str, Any]) -> Any:
    """The input object of a row: its ``input`` cell, else the input column(s) it has."""
    if "input" in row:
        return row["input"]
    return {k: row[k] for k in ROW_INPUTS if k in row}


def row_source(row: Any) -> tuple[str | None, str | None]:
    """(source, client id) of a row that could not be read, each None where it is unreadable."""
    if not isinstance(row, dict):
        return None, None
    try:
        source = fields.text_field(row, "source") if row.get("source") else None
    except BadRecord:
        source = None
    try:
        client_id = fields.request_id(row)
    except BadRecord:
        client_id = None
    return source, client_id
