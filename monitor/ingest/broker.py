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

Poison pills: an entry that keeps a consumer from committing (it crashes the process, say) would
be redelivered forever. An entry delivered more than ``max_deliveries`` times (XPENDING's count;
``[ingest] max_deliveries``, default 5) is dead-lettered unscored and acknowledged, unless it is
refused for a reason of its own (it is parsed first, and keeps that reason). Only what a crash
leaves behind counts: the first delivery, and the reading of this consumer's pending entries after
a (re)start or a claim. Those re-deliveries are read, scored and committed one entry at a time
(claims take entries over with JUSTID, which delivers nothing), so a poison pill crashes the
consumer alone and the entries pending beside it are scored. A retry after an outage in the same
process re-reads its pending entries with XRANGE, which delivers nothing, so a database outage
does not turn good entries into poison pills.

Failures (database, registry or Redis away): the consumer pauses and retries; with ``drain`` it
gives up after ``DRAIN_ATTEMPTS`` failed rounds in a row, in one sentence (the entries stay
pending for the next run).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from monitor import metrics
from monitor.errors import RobmonError, first_line, quoted
from monitor.ingest import store
from monitor.ingest.pipeline import Ingester, IngestSummary, Prepared
from monitor.ingest.redis_stream import (
    DEFAULT_GROUP,
    FIELD,
    MAX_DELIVERIES,
    StreamAddress,
    connect,
    default_consumer,
)
from monitor.ingest.sources import RawLine

log = logging.getLogger(__name__)
# with --drain, rounds in a row that may fail before the run gives up (follow mode retries on)
DRAIN_ATTEMPTS = 3
_SHOWN_FIELDS = 8  # fields of a record-less entry that its dead letter names


@dataclass
class _Batch:
    ids: list[str]  # every entry of the batch (all acknowledged after the commit)
    prepared: Prepared | None  # None when every entry was committed before


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
        max_deliveries: int = MAX_DELIVERIES,
        drain_attempts: int = DRAIN_ATTEMPTS,
    ) -> None:
        self.ingester = ingester
        self.address = address
        self.group = group
        self.consumer = consumer or default_consumer()
        self.claim_after = claim_after
        self.block = block
        self.retry_after = retry_after
        self.max_deliveries = max_deliveries
        self.drain_attempts = drain_attempts
        self._failures = 0
        self.redis = connect(address.url)
        self._ensure_group()
        self._next_claim = 0.0
        self._next_backlog = 0.0
        # whose pending entries are delivered (and counted) one at a time: "own" after a (re)start,
        # "claimed" after a claim, None when a re-read is a retry (XRANGE, not a delivery)
        self._counted: str | None = "own"

    def run(self, stop: threading.Event, drain: bool = False) -> IngestSummary:
        """Consume until ``stop`` is set (or, with ``drain``, until nothing is left to read).

        Batch n is committed and acknowledged on a writer thread while batch n+1 is parsed and
        scored here. A failure (database, registry or Redis away) leaves the entries pending:
        after a pause they are read again from this consumer's pending list."""
        import redis
        from sqlalchemy.exc import SQLAlchemyError

        started = time.perf_counter()
        log.info(
            "consuming %s as %s/%s (claiming entries idle over %.0f s)",
            self.address,
            self.group,
            self.consumer,
            self.claim_after,
        )
        own_pending = True  # at start: entries delivered to this name before a restart
        pending: Future | None = None
        self._failures = 0  # rounds failed since the last commit

        def settle() -> None:  # wait for the batch being committed; raise its error
            nonlocal pending
            if pending is not None:
                committing, pending = pending, None
                committing.result()

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-commit") as writer:
            while not stop.is_set():
                try:
                    if own_pending or self._counted:
                        settle()
                    entries, source = self._next_entries(own_pending, block=not drain)
                    own_pending = source == "own"  # read them until none are left
                    if entries:
                        prepared = self._prepare(entries, redelivered=source != "new")
                        settle()
                        pending = writer.submit(self._store, prepared)
                    else:
                        settle()
                        if drain and self._drained():
                            break
                    self._report_backlog()
                except (RobmonError, SQLAlchemyError, redis.RedisError) as err:
                    with contextlib.suppress(Exception):
                        settle()
                    own_pending = True  # not acknowledged: read again after the pause
                    self._counted = None  # ... without counting that as a delivery
                    self._failures += 1
                    if drain and self._failures >= self.drain_attempts:
                        raise RobmonError(self._give_up_reason(err)) from err
                    log.error("stream ingest paused: %s (retry in %.0f s)", err, self.retry_after)
                    stop.wait(self.retry_after)
            settle()
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

    def _next_entries(self, own_pending: bool, block: bool) -> tuple[list[Any], str]:
        """(entries, where from): this consumer's pending entries when asked ("own"), else
        entries idle too long at other consumers ("claimed"), else new ones ("new"). Own and
        claimed entries may have been committed before (see ``_prepare``)."""
        count = self.ingester.batch_size
        if own_pending or self._counted:
            # a counted delivery (after a crash, or a claim) takes one entry at a time: a poison
            # pill then crashes the consumer alone, and the entries pending beside it are scored
            own = self._read("0", 1, None) if self._counted else self._reread(count)
            if own:
                return own, self._counted or "own"
            self._counted = None
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + max(self.claim_after / 4, 0.5)
            if self._claim(count):  # now this consumer's own, read one at a time
                self._counted = "claimed"
                return self._next_entries(own_pending, block)
        return self._read(">", count, int(self.block * 1000) if block else None), "new"

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

    def _reread(self, count: int) -> list[Any]:
        """This consumer's pending entries, read again without delivering them (XRANGE): a retry
        in the same process is not a delivery that a poison pill could have caused."""
        pending = self.redis.xpending_range(
            self.address.stream, self.group, "-", "+", count, consumername=self.consumer
        )
        ids = [_text(row["message_id"]) for row in pending]
        if not ids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xrange(self.address.stream, entry_id, entry_id, count=1)
        found = [rows[0] for rows in pipe.execute() if rows]
        trimmed = set(ids) - {_text(entry_id) for entry_id, _ in found}
        if trimmed:  # trimmed from the stream (MAXLEN) meanwhile: nothing to score
            self.redis.xack(self.address.stream, self.group, *trimmed)
        return [(entry_id, fields) for entry_id, fields in found if fields]

    def _claim(self, count: int) -> int:
        """Take over entries idle at other (dead or stuck) consumers for longer than
        ``claim_after``, without delivering them (JUSTID: they are delivered, and counted, as
        this consumer reads them one at a time). Returns how many."""
        ids = self.redis.xautoclaim(
            self.address.stream,
            self.group,
            self.consumer,
            min_idle_time=int(self.claim_after * 1000),
            start_id="0-0",
            count=count,
            justid=True,
        )
        if ids:
            log.warning("claimed %d entries left pending by another consumer", len(ids))
        return len(ids)

    def _drained(self) -> bool:
        pending = self.redis.xpending(self.address.stream, self.group)["pending"]
        return not pending and not self._undelivered()

    def _undelivered(self) -> int:
        for group in self.redis.xinfo_groups(self.address.stream):
            if _text(group["name"]) == self.group:
                return int(group.get("lag") or 0)
        return 0

    # -- one batch ---------------------------------------------------------------------------

    def handle(self, entries: list[tuple[bytes, dict[bytes, bytes]]], redelivered: bool) -> None:
        """Score the entries not yet committed, commit, then acknowledge them all."""
        self._store(self._prepare(entries, redelivered))

    def _prepare(self, entries: list[Any], redelivered: bool) -> _Batch:
        """Parse and score (no writes). Entries delivered before may have been committed by a
        consumer that died before acknowledging them: those are only acknowledged. Entries
        delivered more than ``max_deliveries`` times are dead-lettered unscored."""
        ids = [_text(entry_id) for entry_id, _ in entries]
        keys = [f"{self.address.stream}:{entry_id}" for entry_id in ids]
        done: set[str] = set()
        if redelivered:
            with self.ingester.db.session() as s:
                done = store.known_origins(s, keys)
            if done:
                log.info("acknowledging %d entries committed before a consumer stopped", len(done))
        fresh = [
            (key, entry_id, _line(self.address.stream, entry_id, fields))
            for key, entry_id, (_, fields) in zip(keys, ids, entries, strict=True)
            if key not in done
        ]
        deliveries = self._deliveries([i for _, i, _ in fresh]) if redelivered else {}
        poison = {
            key: self._poison_reason(entry_id, deliveries[entry_id])
            for key, entry_id, _ in fresh
            if deliveries.get(entry_id, 0) > self.max_deliveries
        }
        if poison:
            log.warning(
                "%d entries delivered more than %d times: set aside as poison pills unless "
                "refused for a reason of their own",
                len(poison),
                self.max_deliveries,
            )
        prepared = None
        if fresh:  # parsed first: an entry refused for its own reason keeps that reason
            prepared = self.ingester.prepare(
                [line for _, _, line in fresh], [key for key, _, _ in fresh], set_aside=poison
            )
        return _Batch(ids, prepared)

    def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """How many times each entry was delivered (XPENDING's count), one round trip."""
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.address.stream, self.group, entry_id, entry_id, 1)
        return {
            _text(row["message_id"]): int(row["times_delivered"])
            for rows in pipe.execute()
            for row in rows
        }

    def _poison_reason(self, entry_id: str, deliveries: int) -> str:
        return (
            f"stream entry {entry_id} was delivered {deliveries} times without being committed "
            f"(more than max_deliveries = {self.max_deliveries}): set aside as a poison pill."
        )

    def _give_up_reason(self, err: BaseException) -> str:
        return (
            f"stream ingest stopped after {self._failures} failed attempts in a row: "
            f"{first_line(err).rstrip('.')} (the entries stay pending for the next run)."
        )

    def _store(self, batch: _Batch) -> None:
        """Commit the batch's scores and dead letters, then acknowledge its entries."""
        if batch.prepared is not None:
            self.ingester.store_prepared(batch.prepared, None)
        self.redis.xack(self.address.stream, self.group, *batch.ids)
        self._failures = 0
        oldest_ms = min(int(entry_id.split("-")[0]) for entry_id in batch.ids)
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
    """The entry's record as a line; an entry without one (or whose field names cannot be
    read) becomes a line refused with that reason, its fields as the excerpt: it is
    dead-lettered and acknowledged like any bad record, never fatal to its batch."""
    origin = f"redis:{stream}"
    data = fields.get(FIELD.encode())
    if data is not None:
        return RawLine(origin, 0, 0, 0, data, len(data))
    shown = _shown_fields(fields)
    return RawLine(origin, 0, 0, 0, shown, len(shown), refused=_no_record_reason(fields))


def _no_record_reason(fields: dict[bytes, bytes]) -> str:
    try:
        names = sorted(name.decode() for name in fields)
    except UnicodeDecodeError:
        return f"stream entry has no '{FIELD}' field (its field names are not UTF-8)."
    listed = ", ".join(quoted(name) for name in names[:_SHOWN_FIELDS])
    more = f" and {len(names) - _SHOWN_FIELDS} more" if len(names) > _SHOWN_FIELDS else ""
    return f"stream entry has no '{FIELD}' field (its fields: {listed or 'none'}{more})."


def _shown_fields(fields: dict[bytes, bytes]) -> bytes:
    """The first fields as Python bytes literals (names and values cut short): readable
    whatever bytes they hold."""
    items = list(fields.items())[:_SHOWN_FIELDS]
    return ("{" + ", ".join(f"{k[:64]!r}: {v[:256]!r}" for k, v in items) + "}").encode()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
