"""One evaluation of the alert rules over what has been ingested since the last one.

    for each chunk of new inputs (score-id order): match fingerprints -> feed the sources'
    sequential rate tests -> mark evaluated
    -> rate findings (FDR across sources) + probing findings for the models with new matches
    -> incidents (+ outbox) -> forget fingerprints older than each model's watermark

Every new input is read once (its fingerprint row's ``matched`` mark), so the cost follows the
new records; everything happens in one transaction, so a failed evaluation leaves nothing half
done. All windows, the retention and the cool-down run on record time: a model version's
watermark is the newest record time ingested for it, never the wall clock, so a backlog replayed
a week late raises the same incidents as the live stream did. An ``alert-evaluation`` lease keeps
two evaluations (scheduler and a CLI call) from running at once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from monitor import leases
from monitor.alerts import families, lifecycle, probing, rules
from monitor.alerts.probing import FINGERPRINT_COLUMNS, ProbeMatcher
from monitor.alerts.sequential import Observation, SourceTests, tested_rates
from monitor.alerts.settings import AlertSettings
from monitor.db.models import DetectorCalibration, InputFingerprint, InputScore, SourceActivity
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import RobmonError

LEASE = "alert-evaluation"
DEFAULT_MIN_SHARED = 12
CHUNK = 5000
TIERS = ("combined_suspicious", "flagged", "strong_suspicious", "low_confidence")
Key = tuple[str, str, str]  # source, model name, model version


@dataclass
class Evaluation:
    sources: int = 0
    fingerprints: int = 0
    findings: int = 0
    opened: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Evaluator:
    """Holds the probe matcher's in-memory index between evaluations of one process."""

    def __init__(self, db: Database, settings: AlertSettings, holder: str) -> None:
        self.db = db
        self.settings = settings
        self.holder = holder
        self.matcher = ProbeMatcher(settings.probe_window)

    def evaluate(self, now: datetime | None = None) -> Evaluation:
        """``now`` (wall clock) only stamps when incidents were opened and updated."""
        if not leases.acquire(self.db, LEASE, self.holder, 600):
            holder = leases.current_holder(self.db, LEASE)
            raise RobmonError(
                f"alert evaluation is already running ({holder[0] if holder else '?'})."
            )
        try:
            return self._evaluate(now or utcnow())
        except BaseException:
            self.matcher.indexes.clear()  # rolled back: rebuild from what was committed
            raise
        finally:
            leases.release(self.db, LEASE, self.holder)

    def _evaluate(self, now: datetime) -> Evaluation:
        started = time.perf_counter()
        result = Evaluation()
        calibrations = _calibrations(self.db)
        with self.db.session() as s:
            spans, tested = self._read_new_inputs(s, calibrations, result)
            result.sources = len(tested)
            marks = watermarks(s)
            findings = rules.rate_findings(s, marks, self.settings)
            thresholds = {m: self._min_shared(calibrations, m) for m in spans}
            findings += families.probing_findings(s, spans, thresholds, self.settings)
            result.findings = len(findings)
            applied = lifecycle.apply_findings(s, findings, self.settings, now)
            rules.mark_reported(s, applied.taken)
            s.execute(
                update(SourceActivity).where(SourceActivity.dirty.is_(True)).values(dirty=False)
            )
            for model, mark in marks.items():
                probing.prune(s, model, mark - self.settings.fingerprint_retention)
        result.opened, result.updated = applied.opened, applied.updated
        result.escalated, result.suppressed = applied.escalated, applied.suppressed
        result.seconds = time.perf_counter() - started
        return result

    def _read_new_inputs(
        self, s: Session, calibrations: dict[tuple[str, str], dict[str, Any]], result: Evaluation
    ) -> tuple[dict[tuple[str, str], tuple[datetime, datetime]], set[Key]]:
        """Every input not yet evaluated, in chunks: probe matching and sequential tests."""
        min_shared = {m: self._min_shared(calibrations, m) for m in calibrations}
        default = self._min_shared(calibrations, None)
        tests: dict[Key, SourceTests] = {}
        spans: dict[tuple[str, str], tuple[datetime, datetime]] = {}
        while True:
            rows = s.execute(
                select(*FINGERPRINT_COLUMNS, *(getattr(InputScore, t) for t in TIERS))
                .join(InputScore, InputScore.id == InputFingerprint.score_id)
                .where(InputFingerprint.matched.is_(False))
                .order_by(InputFingerprint.score_id)
                .limit(CHUNK)
            ).all()
            if not rows:
                break
            for model, (first, last) in self.matcher.process(s, rows, min_shared, default).items():
                old = spans.get(model, (first, last))
                spans[model] = (min(old[0], first), max(old[1], last))
            self._feed_tests(s, rows, tests, calibrations)
            s.execute(
                update(InputFingerprint)
                .where(InputFingerprint.score_id.in_([r.score_id for r in rows]))
                .values(matched=True)
                .execution_options(synchronize_session=False)
            )
            result.fingerprints += len(rows)
        _save_tests(s, tests)
        return spans, set(tests)

    def _min_shared(
        self, calibrations: dict[tuple[str, str], dict[str, Any]], model: tuple[str, str] | None
    ) -> int:
        """The match threshold: configured, else calibrated for the model, else the default."""
        calibrated = calibrations.get(model, {}).get("min_shared") if model else None
        return self.settings.probe_min_shared or calibrated or DEFAULT_MIN_SHARED

    def _feed_tests(
        self,
        s: Session,
        rows: list[Any],
        tests: dict[Key, SourceTests],
        calibrations: dict[tuple[str, str], dict[str, Any]],
    ) -> None:
        by_key: dict[Key, list[Observation]] = defaultdict(list)
        for r in rows:
            by_key[(r.source, r.model_name, r.model_version)].append(
                Observation(r.score_id, r.ts, {t: bool(getattr(r, t)) for t in TIERS})
            )
        _load_tests(s, [k for k in by_key if k not in tests], tests)
        for key, observations in by_key.items():
            baseline = calibrations.get(key[1:])
            if baseline is None:
                continue
            rates = tested_rates(baseline, self.settings.baseline_factor)
            tests[key].update(observations, rates, self.settings.horizon)


def _load_tests(s: Session, keys: list[Key], tests: dict[Key, SourceTests]) -> None:
    by_model: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source, name, version in keys:
        by_model[(name, version)].append(source)
    for (name, version), sources in by_model.items():
        for i in range(0, len(sources), 1000):
            chunk = sources[i : i + 1000]
            stored = {
                r.source: (r.sequential, r.best)
                for r in s.execute(
                    select(
                        SourceActivity.source, SourceActivity.sequential, SourceActivity.best
                    ).where(
                        SourceActivity.model_name == name,
                        SourceActivity.model_version == version,
                        SourceActivity.source.in_(chunk),
                    )
                )
            }
            for source in chunk:
                tests[(source, name, version)] = SourceTests.load(*stored.get(source, (None, None)))


def _save_tests(s: Session, tests: dict[Key, SourceTests]) -> None:
    """Every tested source's state; its best evidence only where that changed."""
    rows = [
        ({"source": k[0], "model_name": k[1], "model_version": k[2]}, t.dump(), t.best_changed)
        for k, t in tests.items()
    ]
    if rows:
        s.execute(
            update(SourceActivity), [{**key, "sequential": d["sequential"]} for key, d, _ in rows]
        )
    changed = [{**key, "best": d["best"], "best_p": d["best_p"]} for key, d, c in rows if c]
    if changed:
        s.execute(update(SourceActivity), changed)


def watermarks(s: Session) -> dict[tuple[str, str], datetime]:
    """Per model version, the newest record time ingested: the clock of the alert rules."""
    return {
        (name, version): mark
        for name, version, mark in s.execute(
            select(
                SourceActivity.model_name,
                SourceActivity.model_version,
                func.max(SourceActivity.last_seen),
            ).group_by(SourceActivity.model_name, SourceActivity.model_version)
        )
    }


def _calibrations(db: Database) -> dict[tuple[str, str], dict[str, Any]]:
    """Per model version, the newest calibration's benign rates, FPR and match threshold."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    with db.session() as s:
        rows = s.execute(
            select(
                DetectorCalibration.model_name,
                DetectorCalibration.model_version,
                DetectorCalibration.fpr,
                DetectorCalibration.baseline,
            ).order_by(DetectorCalibration.created_at, DetectorCalibration.id)
        )
        for name, version, fpr, baseline in rows:
            out[(name, version)] = {**baseline, "fpr": fpr}
    return out
