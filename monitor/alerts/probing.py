"""Query-attack detection: match each new input's fingerprint against the recent ones.

A query-based black-box attack (SimBA, Square, boundary attacks) sends many inputs that differ
from each other by a few pixels; benign traffic almost never does (Chen, Carlini & Wagner 2019;
Blacklight, Li et al. 2022). Each unmatched fingerprint is compared, in arrival order, with the
fingerprints of the same model inside the probe window (from every source: one attacker spread
over many addresses still repeats itself). A query that shares at least ``min_shared`` hashes
with an earlier, different input is a near-duplicate: stored as a ``probe_matches`` row with the
best earlier match from its own source and the best from any other source.

Each hash's postings are scanned from the newest entry back, at most ``RECENT_POSTINGS`` of
them: a query attack repeats its recent queries, and a hash that thousands of inputs share (a
blank border) costs no more than any other. Hashes that say nothing (in more than 2% of the
benign calibration images) are left out of the fingerprints at scoring time, and the match
threshold is calibrated on exactly those fingerprints (``monitor.detect.fingerprints``).

The index lives in memory for the life of the evaluating process and is rebuilt from the
database (the probe window's fingerprints) when it starts. All times here are record times.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from monitor.db.models import InputFingerprint, ProbeMatch
from monitor.detect.fingerprints import from_bytes

FINGERPRINT_COLUMNS = (
    InputFingerprint.score_id,
    InputFingerprint.ts,
    InputFingerprint.source,
    InputFingerprint.model_name,
    InputFingerprint.model_version,
    InputFingerprint.predicted,
    InputFingerprint.input_sha256,
    InputFingerprint.hashes,
)
RECENT_POSTINGS = 256


@dataclass
class _Entry:
    score_id: int
    ts: datetime
    source: str
    predicted: int
    sha: str


@dataclass
class FingerprintIndex:
    """Postings (hash -> entries, oldest first) of one model version's fingerprints in the
    window. Entries arrive in score-id order, so the oldest are evicted from the front."""

    window: timedelta
    entries: OrderedDict[int, _Entry] = field(default_factory=OrderedDict)
    postings: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    hashes: dict[int, list[int]] = field(default_factory=dict)
    newest: datetime | None = None

    def add(self, entry: _Entry, fingerprint: np.ndarray) -> None:
        values = fingerprint.tolist()
        self.entries[entry.score_id] = entry
        self.hashes[entry.score_id] = values
        for h in values:
            self.postings[h].append(entry.score_id)
        if self.newest is None or entry.ts > self.newest:
            self.newest = entry.ts
            self.evict(self.newest - self.window)

    def evict(self, before: datetime) -> None:
        while self.entries:
            score_id, oldest = next(iter(self.entries.items()))
            if oldest.ts >= before:
                return
            del self.entries[score_id]
            for h in self.hashes.pop(score_id):
                posting = self.postings[h]
                gone = 0
                while gone < len(posting) and posting[gone] not in self.entries:
                    gone += 1
                if gone == len(posting):
                    del self.postings[h]
                else:
                    del posting[:gone]

    def matches(
        self, entry: _Entry, fingerprint: np.ndarray, min_shared: int
    ) -> list[tuple[_Entry, int]]:
        """Earlier entries in the window sharing at least ``min_shared`` hashes (not exact
        copies), most similar first."""
        counts: Counter[int] = Counter()
        for h in fingerprint.tolist():
            posting = self.postings.get(h)
            if posting:
                counts.update(posting[-RECENT_POSTINGS:])
        start = entry.ts - self.window
        found = []
        for sid, shared in counts.items():
            if shared < min_shared:
                continue
            other = self.entries.get(sid)
            if other is not None and other.sha != entry.sha and start <= other.ts <= entry.ts:
                found.append((other, shared))
        return sorted(found, key=lambda m: -m[1])


@dataclass
class ProbeMatcher:
    """Matches new fingerprints and writes probe matches; keeps an index per model version."""

    window: timedelta
    indexes: dict[tuple[str, str], FingerprintIndex] = field(default_factory=dict)

    def index(self, session: Session, model: tuple[str, str], since: datetime) -> FingerprintIndex:
        if model not in self.indexes:
            index = FingerprintIndex(self.window)
            rows = session.execute(
                select(*FINGERPRINT_COLUMNS)
                .where(
                    InputFingerprint.model_name == model[0],
                    InputFingerprint.model_version == model[1],
                    InputFingerprint.matched.is_(True),
                    InputFingerprint.ts >= since,
                )
                .order_by(InputFingerprint.score_id)
            )
            for row in rows:
                index.add(_entry(row), from_bytes(row.hashes))
            self.indexes[model] = index
        return self.indexes[model]

    def process(
        self,
        session: Session,
        rows: list[Any],
        min_shared: dict[tuple[str, str], int],
        default_min_shared: int,
    ) -> dict[tuple[str, str], tuple[datetime, datetime]]:
        """Match fingerprints (score-id order) and store their near-duplicates; returns, per
        model version, the record-time span of the new matches."""
        if not rows:
            return {}
        earliest = min(r.ts for r in rows) - self.window
        matches = []
        spans: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        for row in rows:
            model = (row.model_name, row.model_version)
            index = self.index(session, model, earliest)
            entry, fingerprint = _entry(row), from_bytes(row.hashes)
            threshold = min_shared.get(model, default_min_shared)
            found = index.matches(entry, fingerprint, threshold)
            own = next(((m, s) for m, s in found if m.source == entry.source), None)
            other = next(((m, s) for m, s in found if m.source != entry.source), None)
            for match in (own, other):
                if match is not None:
                    matches.append(_match_row(row, entry, *match))
                    first, last = spans.get(model, (entry.ts, entry.ts))
                    spans[model] = (min(first, entry.ts), max(last, entry.ts))
            index.add(entry, fingerprint)
        if matches:
            session.execute(ProbeMatch.__table__.insert(), matches)
        return spans


def _entry(row: Any) -> _Entry:
    return _Entry(row.score_id, row.ts, row.source, row.predicted, row.input_sha256)


def _match_row(row: Any, entry: _Entry, other: _Entry, shared: int) -> dict:
    return {
        "score_id": entry.score_id,
        "matched_score_id": other.score_id,
        "ts": entry.ts,
        "source": entry.source,
        "matched_source": other.source,
        "model_name": row.model_name,
        "model_version": row.model_version,
        "shared": shared,
        "flipped": entry.predicted != other.predicted,
    }


def prune(session: Session, model: tuple[str, str], before: datetime) -> None:
    """Forget a model version's fingerprints and matches older than ``before`` (record time:
    its watermark less the retention period)."""
    name, version = model
    session.execute(
        delete(InputFingerprint).where(
            InputFingerprint.model_name == name,
            InputFingerprint.model_version == version,
            InputFingerprint.ts < before,
            InputFingerprint.matched.is_(True),
        )
    )
    session.execute(
        delete(ProbeMatch).where(
            ProbeMatch.model_name == name,
            ProbeMatch.model_version == version,
            ProbeMatch.ts < before,
        )
    )
