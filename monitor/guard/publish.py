"""Every guarded request as a production record, so that the out-of-band monitor (ingester,
alert rules, dashboard) sees all traffic, refused requests included.

Destinations: a JSON Lines file (appended, one line per request, flushed per batch) or a Redis
stream (``redis://HOST:PORT[/DB]/STREAM``, the ingester's ``--redis-stream`` format, one entry per
request in the field ``record``). Writing happens on a background thread so that a request
waits for no disk or network; ``close()`` (and interpreter exit) writes what is queued. A
destination that fails is retried with backoff and nothing queued is dropped; the failure is
logged once per outage.

Records follow the production record format (ARCHITECTURE.md) with the input as ``npy_b64``
(float32 C×H×W: exactly what the guard scored) and a ``guard`` object: verdict and reason.
"""

from __future__ import annotations

import atexit
import base64
import functools
import io
import json
import logging
import os
import queue
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)
RETRY_SECONDS = (0.5, 1, 2, 5, 10)


def production_record(
    ref: Any, image: Any, verdict: Any, ts: datetime, guarded_version: str | None = None
) -> dict[str, Any]:
    """The production record of one guarded request (``image``: C×H×W tensor, or the input
    object as the client sent it when it could not be decoded)."""
    record: dict[str, Any] = {
        "id": verdict.request_id,
        "ts": ts.isoformat().replace("+00:00", "Z"),
        "source": verdict.source,
        "model": ref.name,
        "version": ref.version,
        "input": {"npy_b64": npy_b64(image)} if isinstance(image, torch.Tensor) else image,
        "guard": {"verdict": verdict.verdict, "reason": verdict.reason[:255]},
    }
    if guarded_version is not None:
        record["guard"]["version"] = guarded_version
    return record


def raw_record(ref: Any, row: Any, verdict: Any, ts: datetime) -> dict[str, Any]:
    """The production record of a request row that could not be read: its source and input as
    sent (so that the ingester's dead letter says why and names the sender)."""
    record = production_record(ref, None, verdict, ts)
    if isinstance(row, dict):
        record["source"] = row.get("source")
        spec = row.get("input", {k: v for k, v in row.items() if k not in ("source", "id")})
    else:
        record.pop("source")
        spec = row
    record["input"] = spec
    if record["source"] is None:
        record.pop("source")  # the dead letter says it is missing
    return record


def npy_b64(image: torch.Tensor) -> str:
    """Base64 of the ``.npy`` file of a float32 image (the header is made once per shape)."""
    array = np.ascontiguousarray(image.detach().cpu().float().numpy())
    return base64.b64encode(_npy_header(array.shape) + array.tobytes()).decode("ascii")


@functools.lru_cache(maxsize=64)
def _npy_header(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=np.float32), allow_pickle=False)
    data = buffer.getvalue()
    return data[: len(data) - 4 * int(np.prod(shape))]


def to_line(record: dict[str, Any]) -> str:
    """One JSON line; a client's input that is no JSON (NaN, Infinity, nesting too deep for the
    encoder) is replaced by a note, so the line stays readable and its dead letter keeps the
    sender."""
    try:
        return json.dumps(record, separators=(",", ":"), allow_nan=False)
    except (ValueError, RecursionError, TypeError):
        kept = {**record, "input": {"array": "not JSON numbers (NaN, Infinity or too deep)"}}
        return json.dumps(kept, separators=(",", ":"), allow_nan=False, default=str)


class Publisher:
    """Writes records on a background thread (see the module docstring)."""

    def __init__(self, write: Any, where: str) -> None:
        self._write, self.where = write, where
        self._queue: queue.Queue[list[str] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="guard-publisher", daemon=True)
        self._thread.start()
        self.published = 0
        atexit.register(self.close)

    def publish_batch(self, records: list[dict[str, Any]]) -> None:
        self._queue.put([to_line(r) for r in records])

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            lines = self._queue.get()
            if lines is None:
                return
            self._deliver(lines)

    def _deliver(self, lines: list[str]) -> None:
        for attempt in range(10**9):
            try:
                self._write(lines)
                self.published += len(lines)
                if attempt:
                    log.warning("guard: publishing to %s works again.", self.where)
                return
            except Exception as err:  # disk full, Redis away: keep the records, retry
                if not attempt:
                    log.warning("guard: cannot publish to %s (%s); retrying.", self.where, err)
                time.sleep(RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)])


def open_publisher(where: str) -> Publisher:
    """A publisher for a JSON Lines path or a Redis stream address. Nothing is opened yet: a
    destination that is away when the model loads does not stop it from serving (its records
    wait, and are retried)."""
    if where.startswith(("redis://", "rediss://", "unix://")):
        return Publisher(_redis_writer(where), where)
    path = Path(where).expanduser()

    def write(lines: list[str]) -> None:
        # one write(2) on an O_APPEND descriptor per batch: serving workers that share the file
        # never interleave their lines
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    return Publisher(write, str(path))


def _redis_writer(where: str) -> Any:
    from monitor.ingest.redis_stream import FIELD, StreamAddress, connect

    address = StreamAddress.parse(where)  # a malformed address is a ConfigError now
    clients: list[Any] = []

    def write(lines: list[str]) -> None:
        if not clients:
            clients.append(connect(address.url))
        pipe = clients[0].pipeline(transaction=False)
        for line in lines:
            pipe.xadd(address.stream, {FIELD: line})
        pipe.execute()

    return write
