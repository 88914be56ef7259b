"""Publish production requests to robmon from a model server, in one call.

    from monitor.client import send
    send({"source": client_ip, "model": "digits-cnn", "input": {"array": image}})

``image`` may be nested lists, a numpy array or a torch tensor (C×H×W or H×W, values in [0, 1]).
``ts`` defaults to now and ``id`` is kept when given. The record goes to the Redis Stream named
by ``stream`` or ``$ROBMON_REDIS_STREAM`` (``redis://HOST:PORT[/DB]/STREAM``), where a consumer
group of ``robmon ingest --redis-stream`` processes scores it. Sending never blocks the answer
for long: connection problems raise ``RobmonError`` within seconds, and the caller decides.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime
from typing import Any

import orjson

from monitor.errors import ConfigError, RobmonError
from monitor.ingest.redis_stream import FIELD, StreamAddress, connect

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def send(record: dict[str, Any], stream: str | None = None, maxlen: int | None = None) -> str:
    """Append one record to the stream; returns its stream entry id.

    ``maxlen`` caps the stream's length (approximately, as XADD MAXLEN ~ does): entries not
    yet read by the ingesters are lost beyond it, so size it for the longest outage you ride out.
    """
    address = StreamAddress.parse(stream or _default_stream())
    body = orjson.dumps(_complete(record), default=_array, option=orjson.OPT_SERIALIZE_NUMPY)
    import redis

    try:
        entry_id = _client(address.url).xadd(
            address.stream, {FIELD: body}, maxlen=maxlen, approximate=True
        )
    except redis.RedisError as err:
        raise RobmonError(f"cannot publish to {address}: {err}.") from None
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def _default_stream() -> str:
    stream = os.environ.get("ROBMON_REDIS_STREAM")
    if not stream:
        raise ConfigError("no stream given: pass stream= or set ROBMON_REDIS_STREAM.")
    return stream


def _complete(record: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in ("source", "model", "input") if record.get(k) in (None, "")]
    if missing:
        raise ValueError(f"a record needs {', '.join(missing)}")
    if "ts" not in record:
        record = {**record, "ts": datetime.now(UTC).isoformat().replace("+00:00", "Z")}
    return record


def _array(value: Any) -> Any:
    """Torch tensors become lists (numpy arrays are serialised by orjson itself)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().tolist()
    raise TypeError(f"cannot send a {type(value).__name__}")


def _client(url: str) -> Any:
    with _lock:
        if url not in _clients:
            _clients[url] = connect(url)
        return _clients[url]
