"""Production records from a Redis Stream, read by a consumer group of ingesters.

Each stream entry carries one JSON Lines record in its ``record`` field. An entry is
acknowledged (XACK) only after its score or dead letter is committed, and its stream entry id
is stored with it (``input_scores.origin`` / ``dead_letters.entry_key``): an entry that was
committed but not acknowledged when its consumer died is acknowledged by whoever claims it,
never scored twice. Entries left pending by a dead consumer are claimed (XAUTOCLAIM) by the
others once they have been idle for ``claim_after`` seconds.

Order of reading in each round: this consumer's own pending entries (a retry after a database
outage, or a restart under the same name), then entries idle too long at other consumers, then
new entries.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from monitor import metrics
from monitor.errors import RobmonError
from monitor.ingest import store
from monitor.ingest.pipeline import Ingester, IngestSummary
from monitor.ingest.redis_stream import (
    DEFAULT_GROUP,
    FIELD,
    StreamAddress,
    connect,
    default_consumer,
)
from monitor.ingest.sources import RawLine

log = logging.getLogger(__name__)


class StreamConsumer:
    """One member of a consumer group, scoring entries through an Ingester."""

    def __init__(
        self,
        ingester: Ingester,
        address: StreamAddress,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        *,
        claim_after: float = 60.0,
        block: float = 1.0,
        retry_after: float = 5.0,
    ) -> None:
        self.ingester = ingester
        self.address = address
        self.group = group
        self.consumer = consumer or default_consumer()
        self.claim_after = claim_after
        self.block = block
        self.retry_after = retry_after
        self.redis = connect(address.url)
        self._ensure_group()
        self._next_claim = 0.0
        self._next_backlog = 0.0

    def run(self, stop: threading.Event, drain: bool = False) -> IngestSummary:
        """Consume until ``stop`` is set (or, with ``drain``, until nothing is left to read)."""
        import redis

        started = time.perf_counter()
        log.info(
            "consuming %s as %s/%s (claiming entries idle over %.0f s)",
            self.address,
            self.group,
            self.consumer,
            self.claim_after,
        )
        while not stop.is_set():
            try:
                entries = self._next_entries(block=not drain)
                if entries:
                    self.handle(entries)
                elif drain and self._drained():
                    break
                self._report_backlog()
            except (RobmonError, redis.RedisError) as err:  # not acknowledged: retried later
                log.error("stream ingest paused: %s (retrying in %.0f s)", err, self.retry_after)
                stop.wait(self.retry_after)
        self.ingester.summary.seconds += time.perf_counter() - started
        return self.ingester.summary

    # -- reading -----------------------------------------------------------------------------

    def _ensure_group(self) -> None:
        import redis

        try:
            self.redis.xgroup_create(self.address.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise RobmonError(f"cannot create consumer group {self.group}: {err}.") from None

    def _next_entries(self, block: bool) -> list[tuple[bytes, dict[bytes, bytes]]]:
        count = self.ingester.batch_size
        own = self._read("0", count, None)  # delivered to us before, not yet acknowledged
        if own:
            return own
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + max(self.claim_after / 4, 0.5)
            claimed = self._claim(count)
            if claimed:
                return claimed
        return self._read(">", count, int(self.block * 1000) if block else None)

    def _read(self, start: str, count: int, block_ms: int | None) -> list[Any]:
        answer = self.redis.xreadgroup(
            self.group, self.consumer, {self.address.stream: start}, count=count, block=block_ms
        )
        entries = answer[0][1] if answer else []
        trimmed = [entry_id for entry_id, fields in entries if fields is None]
        if trimmed:  # trimmed from the stream (MAXLEN) before it was read: nothing to score
            log.warning("%d pending entries were trimmed from the stream unread", len(trimmed))
            self.redis.xack(self.address.stream, self.group, *trimmed)
        return [(entry_id, fields) for entry_id, fields in entries if fields]

    def _claim(self, count: int) -> list[Any]:
        """Entries idle at other (dead or stuck) consumers for longer than ``claim_after``."""
        answer = self.redis.xautoclaim(
            self.address.stream,
            self.group,
            self.consumer,
            min_idle_time=int(self.claim_after * 1000),
            start_id="0-0",
            count=count,
        )
        claimed = [(i, f) for i, f in answer[1] if f is not None]
        if claimed:
            log.warning("claimed %d entries left pending by another consumer", len(claimed))
        return claimed

    def _drained(self) -> bool:
        pending = self.redis.xpending(self.address.stream, self.group)["pending"]
        return not pending and not self._undelivered()

    def _undelivered(self) -> int:
        for group in self.redis.xinfo_groups(self.address.stream):
            if _text(group["name"]) == self.group:
                return int(group.get("lag") or 0)
        return 0

    # -- one batch ---------------------------------------------------------------------------

    def handle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Score the entries not yet committed, then acknowledge them all."""
        ids = [_text(entry_id) for entry_id, _ in entries]
        keys = [f"{self.address.stream}:{entry_id}" for entry_id in ids]
        with self.ingester.db.session() as s:
            done = store.known_origins(s, keys)
        fresh = [
            (key, _line(self.address.stream, entry_id, fields))
            for key, entry_id, (_, fields) in zip(keys, ids, entries, strict=True)
            if key not in done
        ]
        if fresh:
            self.ingester.process([line for _, line in fresh], None, [key for key, _ in fresh])
        if done:
            log.info("acknowledged %d entries committed before their consumer stopped", len(done))
        self.redis.xack(self.address.stream, self.group, *ids)
        oldest_ms = min(int(entry_id.split("-")[0]) for entry_id in ids)
        metrics.INGEST_LAG.set(max(0.0, time.time() - oldest_ms / 1000))

    def _report_backlog(self) -> None:
        if time.monotonic() < self._next_backlog:
            return
        self._next_backlog = time.monotonic() + 5.0
        pending = self.redis.xpending(self.address.stream, self.group)["pending"]
        metrics.STREAM_BACKLOG.labels(self.address.stream, self.group).set(
            pending + self._undelivered()
        )


def _line(stream: str, entry_id: str, fields: dict[bytes, bytes]) -> RawLine:
    data = fields.get(FIELD.encode())
    if data is None:  # dead-lettered with the fields it had, so nothing is silently dropped
        names = ", ".join(sorted(_text(k) for k in fields)) or "none"
        data = f"stream entry has no '{FIELD}' field (fields: {names})".encode()
    return RawLine(f"redis:{stream}", 0, 0, 0, data, len(data))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
