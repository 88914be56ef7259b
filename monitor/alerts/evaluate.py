"""One evaluation of the alert rules over what has been ingested since the last one.

    match new fingerprints -> rate tests for sources with new inputs -> probing for the models
    those touched -> open/update alerts (+ outbox) -> clear the sources' dirty marks

Cost follows the new records: only sources the ingester marked dirty are tested, from their
per-minute rollups; only unmatched fingerprints are matched. An ``alert-evaluation`` lease keeps
two evaluations (scheduler and a CLI call) from running at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from monitor import leases
from monitor.alerts import lifecycle, probing, rules
from monitor.alerts.probing import ProbeMatcher
from monitor.alerts.settings import AlertSettings
from monitor.db.models import DetectorCalibration, SourceActivity
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import RobmonError

LEASE = "alert-evaluation"
DEFAULT_MIN_SHARED = 12


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
        if not leases.acquire(self.db, LEASE, self.holder, 600):
            holder = leases.current_holder(self.db, LEASE)
            raise RobmonError(
                f"alert evaluation is already running ({holder[0] if holder else '?'})."
            )
        try:
            return self._evaluate(now or utcnow())
        finally:
            leases.release(self.db, LEASE, self.holder)

    def _evaluate(self, now: datetime) -> Evaluation:
        started = time.perf_counter()
        result = Evaluation()
        calibrations = _calibrations(self.db)
        with self.db.session() as s:
            min_shared = {
                k: v["min_shared"] for k, v in calibrations.items() if v.get("min_shared")
            }
            default = self.settings.probe_min_shared or DEFAULT_MIN_SHARED
            if self.settings.probe_min_shared:
                min_shared = {}
            result.fingerprints, touched = self.matcher.process(s, min_shared, default)
        read_at = utcnow()
        with self.db.session() as s:
            dirty = [
                tuple(r)
                for r in s.execute(
                    select(
                        SourceActivity.source,
                        SourceActivity.model_name,
                        SourceActivity.model_version,
                    ).where(SourceActivity.dirty.is_(True))
                )
            ]
            result.sources = len(dirty)
            counts = rules.window_counts(s, dirty, self.settings.window)
            findings = rules.rate_findings(s, counts, calibrations, self.settings)
            findings += rules.probing_findings(s, touched | set(dirty), self.settings)
            result.findings = len(findings)
            applied = lifecycle.apply_findings(s, findings, self.settings, now)
            s.execute(
                update(SourceActivity)
                .where(SourceActivity.dirty.is_(True), SourceActivity.updated_at <= read_at)
                .values(dirty=False)
            )
            probing.prune(s, now - self.settings.fingerprint_retention)
        result.opened, result.updated = applied.opened, applied.updated
        result.escalated, result.suppressed = applied.escalated, applied.suppressed
        result.seconds = time.perf_counter() - started
        return result


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
