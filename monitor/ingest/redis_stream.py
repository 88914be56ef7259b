"""The Redis Stream contract shared by the ingesters and the publishing client (light: no
torch, MLflow or database imports, so a model server can publish cheaply)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

from monitor.errors import ConfigError, RobmonError

FIELD = "record"  # the stream entry field holding one JSON Lines record
DEFAULT_GROUP = "robmon-ingest"
# deliveries (XPENDING's count) after which an entry is dead-lettered and acknowledged unscored
MAX_DELIVERIES = 5


@dataclass(frozen=True)
class StreamAddress:
    """``redis://HOST:PORT[/DB]/STREAM``: the server's URL and the stream's name."""

    url: str
    stream: str

    @classmethod
    def parse(cls, text: str) -> StreamAddress:
        scheme, sep, rest = text.partition("://")
        if not sep or scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"{text!r} is not a Redis stream address: expected redis://HOST:PORT/STREAM."
            )
        server, slash, stream = rest.rpartition("/")
        if not slash or not server or not stream:
            raise ConfigError(f"{text!r} names no stream: expected redis://HOST:PORT[/DB]/STREAM.")
        return cls(f"{scheme}://{server}", stream)

    def __str__(self) -> str:
        return f"{self.url}/{self.stream}"


def default_consumer() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def connect(url: str) -> Any:
    """A Redis client that fails within seconds when the server is away."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    try:
        client.ping()
    except redis.RedisError as err:
        raise RobmonError(f"cannot reach Redis at {url}: {err}.") from None
    return client
