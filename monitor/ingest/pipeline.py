"""The ingester: lines -> records -> scores (batched per model version) -> one transaction.

Per batch of lines: parse each (bad ones become dead letters), drop repeated (source, id)
pairs, group by model version, score each group in one batched model call, then store scores,
dead letters and the read position together. Bad input never stops the pipeline; an
unreachable registry or database does (nothing is committed, so nothing is lost).
"""

from __future__ import annotations

import copy
import logging
import os
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from monitor import metrics
from monitor.config import Settings
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.detect.fingerprints import fingerprint_bytes
from monitor.detect.scores import score_inputs
from monitor.errors import BadRecord, ModelIncompatible, RobmonError
from monitor.ingest import rollups, store
from monitor.ingest.dead_letters import dead_letter, undecodable
from monitor.ingest.models import ModelCache, ScoringModel
from monitor.ingest.records import Limits, Record, parse_record
from monitor.ingest.sources import (
    FileTailer,
    NotRegularFile,
    Position,
    RawLine,
    expand_paths,
    open_regular,
    read_lines,
)
from monitor.ingest.store import ScoreTable
from monitor.registry import Registry

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class IngestSummary:
    records: int = 0
    scored: int = 0
    dead_letters: int = 0
    flagged: int = 0
    uncalibrated: int = 0  # scored without flags: the version had no calibration yet
    converted: int = 0  # scored after a conversion rule resized or converted them
    duplicates: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass
class Prepared:
    """A scored batch, not yet committed (``Ingester.prepare``)."""

    lines: int
    scores: ScoreTable
    dead: list[dict[str, Any]]
    repeats: int


@dataclass
class _Batch:
    """Parsed lines of one batch, grouped by model version (``Ingester.parse``)."""

    lines: int
    groups: dict[Any, list[_Parsed]]
    dead: list[dict[str, Any]]
    repeats: int


@dataclass
class _Parsed:
    line: RawLine
    record: Record
    key: str | None


class Ingester:
    """Scores production records exactly once; holds the model cache and the running totals."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        settings: Settings,
        *,
        batch_size: int = 256,
        keep_flagged: Path | None = None,
        device: str = "cpu",
        limits: Limits | None = None,
        on_commit: Callable[[Any, list[dict[str, Any]], list[int]], None] | None = None,
    ) -> None:
        self.db = db
        self.batch_size = batch_size
        self.keep_flagged = keep_flagged
        self.limits = limits or Limits(input_root=settings.input_root)
        self.models = ModelCache(db, registry, settings, device)
        self.summary = IngestSummary(notes=self.models.notes)
        self.on_commit = on_commit  # (session, score rows, ids) inside the batch's transaction

    # -- sources ---------------------------------------------------------------------------

    def ingest_files(self, specs: list[str]) -> IngestSummary:
        """Read files to their end, resuming each at its committed position."""
        started = time.perf_counter()
        positions = store.load_positions(self.db)
        for path in expand_paths(specs):
            try:
                handle = open_regular(path)
            except NotRegularFile as err:  # replaced by a FIFO since the scan
                self._refuse_files([(str(path), str(err))])
                continue
            with handle:
                inode = os.fstat(handle.fileno()).st_ino
                saved = positions.get(str(path))
                position = saved if saved and saved.inode == inode else Position(str(path), inode)
                self._pipelined(self._batches(handle, position))
        self.summary.seconds += time.perf_counter() - started
        return self.summary

    def _batches(
        self, handle: BinaryIO, position: Position
    ) -> Iterator[tuple[list[RawLine], Position]]:
        """Batches of lines, each with the position after it (a copy: reading goes on)."""
        while lines := read_lines(
            handle, position, self.limits.max_line_bytes, self.batch_size, complete_only=False
        ):
            yield lines, copy.copy(position)

    def follow_files(
        self, specs: list[str], stop: threading.Event, poll: float = 0.5, retry_after: float = 5.0
    ) -> IngestSummary:
        """Tail files until ``stop`` is set, across appends, rotation and truncation."""
        started = time.perf_counter()
        tailer = FileTailer(specs, store.load_positions(self.db), self.limits.max_line_bytes)
        try:
            while not stop.is_set():
                tailer.rescan()
                refused = tailer.take_refused()
                try:
                    self._refuse_files(refused)
                except (RobmonError, SQLAlchemyError) as err:  # database down: report later
                    tailer.refused[:0] = refused
                    log.error("ingest paused: %s (retrying in %.0f s)", err, retry_after)
                    stop.wait(retry_after)
                    continue
                batches = tailer.read(self.batch_size)
                for lines, position in batches:
                    committed = copy.copy(position)
                    committed.offset = lines[0].offset
                    committed.line_number = lines[0].line_number - 1
                    try:
                        self.process(lines, position)
                    except RobmonError as err:  # registry or database down: retry later
                        log.error("ingest paused: %s (retrying in %.0f s)", err, retry_after)
                        position.offset, position.line_number = (
                            committed.offset,
                            committed.line_number,
                        )
                        stop.wait(retry_after)
                        break
                if not batches:
                    stop.wait(poll)
        finally:
            tailer.close()
        self.summary.seconds += time.perf_counter() - started
        return self.summary

    def _refuse_files(self, refused: list[tuple[str, str]]) -> None:
        """One dead letter per file that is not read (a FIFO where a log file was)."""
        if not refused:
            return
        dead = [dead_letter(RawLine(path, 0, 0, 0, b"", 0), None, why) for path, why in refused]
        for row in dead:
            row["line_number"] = row["byte_offset"] = None
        store.commit_batch(self.db, ScoreTable(), dead, None)
        self.summary.dead_letters += len(dead)
        metrics.RECORDS_DEAD.inc(len(dead))
        for _, why in refused:
            log.warning("not read: %s", why)

    def ingest_stream(self, stream: BinaryIO, origin: str = "stdin") -> IngestSummary:
        """Read a non-seekable stream (standard input) to its end."""
        started = time.perf_counter()
        self._pipelined(self._batches(stream, Position(origin)))
        self.summary.seconds += time.perf_counter() - started
        return self.summary

    # -- one batch -------------------------------------------------------------------------

    def process(
        self, lines: list[RawLine], position: Position | None, keys: list[str] | None = None
    ) -> list[int]:
        """Score ``lines``; commit scores, dead letters and ``position`` together.

        ``keys`` (one per line) identify lines across re-deliveries (stream entry ids) and are
        stored as each score's origin. Returns the new scores' ids.
        """
        return self.store_prepared(self.prepare(lines, keys), position)

    def _pipelined(self, batches: Iterator[tuple[list[RawLine], Position]]) -> None:
        """Process batches in order, three at a time in flight: the next batch is parsed and
        decoded on a parser thread while this thread scores the current one (torch releases
        the GIL), and the one before is committed on a writer thread (the database's waits
        overlap the model's work). Commits stay in order, and a failed commit stops the run
        before any later batch is committed."""
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-commit") as writer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-parse") as parser,
        ):
            pending: Future | None = None
            upcoming = next(batches, None)
            parsing = parser.submit(self.parse, upcoming[0], None) if upcoming else None
            try:
                while upcoming is not None and parsing is not None:
                    position = upcoming[1]
                    parsed = parsing.result()
                    upcoming = next(batches, None)
                    parsing = parser.submit(self.parse, upcoming[0], None) if upcoming else None
                    prepared = self.score(parsed)
                    if pending is not None:
                        pending.result()
                    pending = writer.submit(self.store_prepared, prepared, position)
            finally:
                if pending is not None:
                    pending.result()

    def prepare(
        self,
        lines: list[RawLine],
        keys: list[str] | None,
        set_aside: dict[str, str] | None = None,
    ) -> Prepared:
        """Parse, drop repeats, score per model version (no database writes). ``set_aside``:
        keys of lines dead-lettered with the given reason instead of scored (when they parse:
        a line's own reason, if it has one, is kept)."""
        batch = self.parse(lines, keys)
        reasons = set_aside or {}
        for ref, items in batch.groups.items():
            for item in items:
                if item.key in reasons:
                    batch.dead.append(
                        dead_letter(item.line, item.key, reasons[item.key], item.record)
                    )
            batch.groups[ref] = [i for i in items if i.key not in reasons]
        return self.score(batch)

    def parse(self, lines: list[RawLine], keys: list[str] | None) -> _Batch:
        """Parse and decode ``lines``, drop repeats, group by model version (no model work,
        no database writes: it runs on the parser thread)."""
        parsed, dead = self._parse(lines, keys or [None] * len(lines))
        parsed, repeats = _drop_repeats(parsed)
        groups: dict[Any, list[_Parsed]] = defaultdict(list)
        for item in parsed:
            try:
                ref = self.models.resolve(item.record.model, item.record.version)
            except BadRecord as err:
                dead.append(dead_letter(item.line, item.key, str(err), item.record))
                continue
            groups[ref].append(item)
        return _Batch(len(lines), groups, dead, repeats)

    def score(self, batch: _Batch) -> Prepared:
        """Score each model version's records of a parsed batch."""
        scores, dead = ScoreTable(), batch.dead
        for ref, items in batch.groups.items():
            if not items:
                continue
            try:
                model = self.models.get(ref)
            except BadRecord as err:
                dead.extend(dead_letter(i.line, i.key, str(err), i.record) for i in items)
                continue
            scores.extend(self._score(model, items, dead))
        return Prepared(batch.lines, scores, dead, batch.repeats)

    def store_prepared(self, prepared: Prepared, position: Position | None) -> list[int]:
        """Commit one prepared batch and count it (the totals change only here)."""
        scores, dead = prepared.scores, prepared.dead
        try:
            ids = self._commit(scores, dead, position)
        except IntegrityError:  # some requests or stream entries were stored before (or meanwhile)
            scores, dead = self._drop_stored(scores, dead)
            ids = self._commit(scores, dead, position)
        self.summary.records += prepared.lines
        self.summary.scored += len(scores)
        self.summary.dead_letters += len(dead)
        self.summary.duplicates += prepared.repeats
        flagged = scores.columns.get("flagged", [])
        self.summary.flagged += sum(flagged)
        self.summary.uncalibrated += scores.column("calibration_id").count(None)
        self.summary.converted += len(scores) - scores.column("conversion").count(None)
        metrics.count_committed(scores, len(dead))
        return ids

    def _commit(
        self, scores: ScoreTable, dead: list[dict[str, Any]], position: Position | None
    ) -> list[int]:
        def extra(session: Any, ids: list[int]) -> None:
            rollups.record(session, scores, ids)
            if self.on_commit is not None:
                self.on_commit(session, scores, ids)

        return store.commit_batch(self.db, scores, dead, position, extra)

    def _drop_stored(
        self, scores: ScoreTable, dead: list[dict[str, Any]]
    ) -> tuple[ScoreTable, list[dict[str, Any]]]:
        """Leave out what is already stored: (source, id) pairs, and stream entries that another
        consumer committed meanwhile (scored or dead-lettered)."""
        pairs = list(zip(scores.column("source"), scores.column("request_id"), strict=True))
        origins = [o for o in scores.column("origin") if o is not None]
        keys = [d["entry_key"] for d in dead if d["entry_key"] is not None]
        with self.db.session() as s:
            stored = store.known_requests(s, [p for p in pairs if p[1] is not None])
            done = store.known_origins(s, origins + keys)
        kept = scores.select(
            [
                i
                for i, (pair, origin) in enumerate(zip(pairs, scores.column("origin"), strict=True))
                if pair not in stored and origin not in done
            ]
        )
        self.summary.duplicates += len(scores) - len(kept)
        return kept, [d for d in dead if d["entry_key"] not in done or d["entry_key"] is None]

    def _parse(
        self, lines: list[RawLine], keys: list[str | None]
    ) -> tuple[list[_Parsed], list[dict[str, Any]]]:
        parsed, dead = [], []
        for line, key in zip(lines, keys, strict=True):
            try:
                if line.refused is not None:
                    raise BadRecord(line.refused)
                if line.size > self.limits.max_line_bytes:
                    raise BadRecord(
                        f"line of {line.size} bytes is over the limit of "
                        f"{self.limits.max_line_bytes} bytes."
                    )
                parsed.append(_Parsed(line, parse_record(line.data, self.limits), key))
            except BadRecord as err:
                dead.append(dead_letter(line, key, str(err), source=err.source, model=err.model))
            except Exception as err:  # one record's failure, never the batch's
                log.warning(
                    "%s:%s: record not decoded", line.origin, line.line_number, exc_info=True
                )
                dead.append(dead_letter(line, key, undecodable(err)))
        return parsed, dead

    def _score(
        self, model: ScoringModel, items: list[_Parsed], dead: list[dict[str, Any]]
    ) -> ScoreTable:
        fitting, conversions = [], []
        for item in items:
            try:
                item.record.image, conversion = model.fit(item.record.image)
                fitting.append(item)
                conversions.append(conversion.text if conversion else None)
            except ModelIncompatible as err:
                dead.append(dead_letter(item.line, item.key, str(err), item.record))
        n = len(fitting)
        if not n:
            return ScoreTable()
        x = torch.stack([i.record.image for i in fitting])
        batch = score_inputs(model.probabilities, x, model.squeezers)
        calibration = model.calibration
        thresholds = calibration.thresholds if calibration else None
        flags = {k: v.tolist() for k, v in thresholds.flags(batch).items()} if thresholds else {}
        no = [False] * n
        squeeze = flags.get("squeeze_suspicious", no)
        combined = flags.get("combined_suspicious", no)
        names = list(batch.divergences)
        divergence_rows = zip(*(batch.divergences[k].tolist() for k in names), strict=True)
        records = [i.record for i in fitting]
        table = ScoreTable(
            {
                "received_at": [utcnow()] * n,
                "ts": [r.ts for r in records],
                "source": [r.source for r in records],
                "model_name": [model.ref.name] * n,
                "model_version": [model.ref.version] * n,
                "request_id": [r.request_id for r in records],
                "predicted": batch.predicted.tolist(),
                "confidence": batch.confidence.tolist(),
                "margin": batch.margin.tolist(),
                "entropy": batch.entropy.tolist(),
                "divergences": [
                    dict(zip(names, values, strict=True)) for values in divergence_rows
                ],
                "max_divergence": batch.max_divergence.tolist(),
                "combined_score": thresholds.combined.score(batch).tolist()
                if thresholds and thresholds.combined
                else [None] * n,
                "low_confidence": flags.get("low_confidence", no),
                "squeeze_suspicious": squeeze,
                "combined_suspicious": combined,
                "strong_suspicious": flags.get("strong_suspicious", no),
                "flagged": [a or b for a, b in zip(squeeze, combined, strict=True)],
                "calibration_id": [calibration.id if calibration else None] * n,
                "input_sha256": [r.sha256 for r in records],
                "origin": [i.key for i in fitting],
                "kept_path": [None] * n,
                "fingerprint": fingerprint_bytes(x, stop=model.stop_hashes),
                "conversion": conversions,
                "guard_verdict": [r.guard_verdict for r in records],
                "guard_reason": [r.guard_reason for r in records],
            }
        )
        if self.keep_flagged is not None:
            table.columns["kept_path"] = [
                str(_keep(self.keep_flagged, record)) if flagged else None
                for record, flagged in zip(records, table.columns["flagged"], strict=True)
            ]
        return table


def _drop_repeats(parsed: list[_Parsed]) -> tuple[list[_Parsed], int]:
    """A (source, id) repeated within the batch is scored once (the database's unique
    constraint catches repeats of stored pairs at commit). Returns the rest and the count."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for item in parsed:
        if item.record.request_id is not None:
            pair = (item.record.source, item.record.request_id)
            if pair in seen:
                continue
            seen.add(pair)
        kept.append(item)
    return kept, len(parsed) - len(kept)


def _keep(folder: Path, record: Record) -> Path:
    """Save a flagged input as PNG for review (named by source and content hash)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_UNSAFE.sub('_', record.source)[:60]}_{record.sha256[:16]}.png"
    if not path.exists():
        array = (record.image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(array[..., 0] if array.shape[2] == 1 else array).save(path)
    return path
