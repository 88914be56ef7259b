"""Scheduled jobs: importable functions that call the library (audits, alerts).

APScheduler stores references such as ``monitor.jobs:registry_poll_job`` in its job store; those
zero-argument functions run the real jobs on the process's ``JobContext``. Every run is recorded
in ``job_runs`` with what it did; an exception is recorded as a failed run and never stops the
scheduler.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select

from monitor.audit import queue
from monitor.audit.runner import Plan, make_plan
from monitor.config import Settings
from monitor.db.models import Audit, JobRun, RegistryWatch
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import RobmonError
from monitor.registry import ModelVersionRef, Registry
from monitor.watch import WatchSettings, audit_config_for

log = logging.getLogger(__name__)
JOB_RUNS_KEPT = 500  # per job


@dataclass
class JobContext:
    db: Database
    registry: Registry
    settings: Settings
    watch: WatchSettings
    worker: str
    stop: threading.Event = field(default_factory=threading.Event)
    _evaluator: Any = None

    def evaluator(self) -> Any:
        """The alert evaluator of this process (its fingerprint index persists between runs)."""
        if self._evaluator is None:
            from monitor.alerts.evaluate import Evaluator
            from monitor.alerts.settings import AlertSettings

            self._evaluator = Evaluator(
                self.db, AlertSettings.from_settings(self.settings), self.worker
            )
        return self._evaluator


_context: JobContext | None = None


def install(context: JobContext) -> None:
    """Make ``context`` the one the importable job functions run on."""
    global _context
    _context = context


def current() -> JobContext:
    if _context is None:
        raise RuntimeError("no JobContext installed (monitor.jobs.install)")
    return _context


def recorded(
    job: str, body: Callable[[JobContext, dict[str, Any]], None], context: JobContext
) -> dict[str, Any]:
    """Run ``body(context, detail)`` as one recorded job run; never raises."""
    detail: dict[str, Any] = {}
    with context.db.session() as s:
        run = JobRun(
            job=job, holder=context.worker, started_at=utcnow(), status="running", detail={}
        )
        s.add(run)
        s.flush()
        run_id = run.id
    status = "ok"
    try:
        body(context, detail)
    except Exception as err:  # recorded, logged, and the scheduler goes on
        status = "failed"
        detail["error"] = (
            str(err) if isinstance(err, RobmonError) else (f"{type(err).__name__}: {err}")
        )
        log.error("job %s failed: %s\n%s", job, detail["error"], traceback.format_exc())
    with context.db.session() as s:
        run = s.get_one(JobRun, run_id)
        run.status, run.finished_at, run.detail = status, utcnow(), detail
        old = (
            select(JobRun.id)
            .where(JobRun.job == job)
            .order_by(JobRun.id.desc())
            .offset(JOB_RUNS_KEPT)
        )
        s.execute(delete(JobRun).where(JobRun.id.in_(old.scalar_subquery())))
    detail["status"] = status
    for key in ("enqueued", "audits", "opened", "escalated", "calibrations"):
        for line in detail.get(key, []):
            log.info("%s: %s", job, line)
    return detail


# -- registry poll ----------------------------------------------------------------------------


def poll_registry(context: JobContext, detail: dict[str, Any]) -> None:
    """Queue audits of new versions and of versions that a watched alias moved to; and retries
    of failed audits whose backoff has passed."""
    registry, watch = context.registry, context.watch
    seen = _seen(context.db)
    enqueued, skipped, reused = [], [], []
    newly_seen: dict[tuple[str, str], str] = {}
    for model in registry.list_models():
        if not watch.watches(model.name):
            continue
        candidates: dict[str, str] = {}
        for version in model.versions:
            if (model.name, f"v:{version.version}") not in seen:
                candidates[version.version] = "registry-poll"
        for alias, version in model.aliases.items():
            if seen.get((model.name, f"alias:{alias}")) != version:
                candidates.setdefault(version, "alias-moved")
                newly_seen[(model.name, f"alias:{alias}")] = version
        for version, trigger in sorted(candidates.items(), key=lambda kv: int(kv[0])):
            ref = ModelVersionRef(model.name, version)
            outcome = _queue_audit(context, ref, trigger, force=False)
            if outcome.startswith("skipped"):
                skipped.append(outcome[len("skipped: ") :])
                continue  # not marked seen: a dataset tag added later makes it auditable
            (enqueued if outcome.startswith("queued") else reused).append(outcome)
            newly_seen[(model.name, f"v:{version}")] = version
    _remember(context.db, newly_seen)
    retries, waiting = queue.due_for_retry(
        context.db, utcnow(), watch.retry_backoff, watch.max_attempts
    )
    for plan in retries:
        if queue.enqueue(context.db, plan, "retry") is not None:
            enqueued.append(f"queued: {plan.ref} (retry)")
    detail.update(enqueued=enqueued, reused=reused, skipped=skipped, waiting=waiting)


def _queue_audit(context: JobContext, ref: ModelVersionRef, trigger: str, force: bool) -> str:
    """One line saying what happened: queued, reused (already audited) or skipped (why)."""
    from monitor.audit import store

    config = audit_config_for(context.registry, ref, context.watch, trigger)
    if isinstance(config, str):
        return f"skipped: {config}"
    try:
        plan: Plan = make_plan(context.registry, ref.uri, config)
    except RobmonError as err:
        return f"skipped: {ref}: {err}"
    if not force:
        existing = store.find_reusable(context.db, ref.name, ref.version, plan.config_hash)
        if existing is not None:
            return f"reused: {ref} (audit {existing})"
    audit_id = queue.enqueue(context.db, plan, trigger)
    if audit_id is None:
        return f"reused: {ref} (already queued or running)"
    return f"queued: {ref} as audit {audit_id} ({trigger})"


def _seen(db: Database) -> dict[tuple[str, str], str]:
    with db.session() as s:
        return {(r.model_name, r.key): r.version for r in s.scalars(select(RegistryWatch))}


def _remember(db: Database, seen: dict[tuple[str, str], str]) -> None:
    with db.session() as s:
        for (model, key), version in seen.items():
            s.merge(RegistryWatch(model_name=model, key=key, version=version, seen_at=utcnow()))


# -- nightly sweep ----------------------------------------------------------------------------


def nightly_sweep(context: JobContext, detail: dict[str, Any]) -> None:
    """Re-audit the versions under watched aliases, and every version audited too long ago."""
    watch = context.watch
    targets: dict[ModelVersionRef, str] = {}
    for model in context.registry.list_models():
        if not watch.watches(model.name):
            continue
        for alias in watch.aliases:
            if alias in model.aliases:
                targets[ModelVersionRef(model.name, model.aliases[alias])] = f"alias {alias}"
    cutoff = utcnow() - watch.max_audit_age
    with context.db.session() as s:
        newest = s.execute(
            select(Audit.model_name, Audit.model_version, Audit.finished_at)
            .where(Audit.status == "succeeded")
            .order_by(Audit.finished_at)
        ).all()
    last: dict[ModelVersionRef, Any] = {}
    for name, version, finished in newest:
        last[ModelVersionRef(name, version)] = finished
    for ref, finished in last.items():
        if watch.watches(ref.name) and finished is not None and finished < cutoff:
            targets.setdefault(ref, f"last audit {finished:%Y-%m-%d}")
    enqueued, skipped = [], []
    for ref, why in targets.items():
        outcome = _queue_audit(context, ref, "nightly-sweep", force=True)
        (skipped if outcome.startswith("skipped") else enqueued).append(f"{outcome} [{why}]")
    detail.update(enqueued=enqueued, skipped=skipped)


# -- audit queue ------------------------------------------------------------------------------


def run_audit_queue(context: JobContext, detail: dict[str, Any]) -> None:
    """Run queued audits one after another until the queue is empty or the process stops."""
    from monitor.worker import run_worker

    detail["audits"] = run_worker(context, once=True)


# -- alerts -----------------------------------------------------------------------------------


def evaluate_alerts(context: JobContext, detail: dict[str, Any]) -> None:
    """Run the alert rules over what was ingested since the last evaluation."""
    result = context.evaluator().evaluate()
    detail.update(
        sources=result.sources,
        fingerprints=result.fingerprints,
        opened=result.opened,
        escalated=result.escalated,
        seconds=result.seconds,
    )


def deliver_notifications(context: JobContext, detail: dict[str, Any]) -> None:
    """Send due webhook notifications from the outbox."""
    from monitor.alerts.notify import deliver_due

    result = deliver_due(context.db, context.evaluator().settings)
    detail.update(delivered=result.delivered, failed=result.failed, given_up=result.given_up)


# -- detector calibration ---------------------------------------------------------------------


def calibrate_detectors(context: JobContext, detail: dict[str, Any]) -> None:
    """Calibrate the detector of the oldest due model version the ingester asked for."""
    from monitor.calibrate import run_due_calibrations

    detail["calibrations"] = run_due_calibrations(context.db, context.registry, context.settings)


# -- importable references for APScheduler ----------------------------------------------------


def registry_poll_job() -> dict[str, Any]:
    return recorded("registry-poll", poll_registry, current())


def nightly_sweep_job() -> dict[str, Any]:
    return recorded("nightly-sweep", nightly_sweep, current())


def alert_evaluation_job() -> dict[str, Any]:
    context = current()
    if not _has_new_inputs(context.db):
        return {"status": "idle"}
    return recorded("alert-evaluation", evaluate_alerts, context)


def notifications_job() -> dict[str, Any]:
    context = current()
    if not _has_due_notifications(context.db):
        return {"status": "idle"}
    return recorded("notifications", deliver_notifications, context)


def _has_new_inputs(db: Database) -> bool:
    from monitor.db.models import InputFingerprint, SourceActivity

    with db.session() as s:
        return (
            s.scalar(select(SourceActivity.source).where(SourceActivity.dirty.is_(True)).limit(1))
            is not None
            or s.scalar(
                select(InputFingerprint.score_id)
                .where(InputFingerprint.matched.is_(False))
                .limit(1)
            )
            is not None
        )


def _has_due_notifications(db: Database) -> bool:
    from monitor.db.models import NotificationOutbox

    with db.session() as s:
        return (
            s.scalar(
                select(NotificationOutbox.id)
                .where(
                    NotificationOutbox.delivered_at.is_(None),
                    NotificationOutbox.next_attempt_at <= utcnow(),
                )
                .limit(1)
            )
            is not None
        )


def calibration_job() -> dict[str, Any]:
    context = current()
    if not _has_due_calibration(context.db):
        return {"status": "idle"}
    return recorded("detector-calibration", calibrate_detectors, context)


def _has_due_calibration(db: Database) -> bool:
    from monitor.calibrate import is_due
    from monitor.db.models import CalibrationRequest

    with db.session() as s:
        query = select(CalibrationRequest.model_name).where(is_due(utcnow())).limit(1)
        return s.scalar(query) is not None


def audit_queue_job() -> dict[str, Any]:
    context = current()
    if not _queue_has_work(context.db):
        return {"status": "idle"}  # polled every few seconds: only real runs are recorded
    return recorded("audit-queue", run_audit_queue, context)


def _queue_has_work(db: Database) -> bool:
    with db.session() as s:
        return s.scalar(select(Audit.id).where(Audit.status == "queued").limit(1)) is not None
