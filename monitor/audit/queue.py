"""The audit queue in the database: enqueue, claim, heartbeat, recover, retry.

A queued audit is an ``audits`` row with status ``queued`` holding its ``active_key``, so the
same audit cannot be queued or run twice at once. Whoever runs audits (the scheduler on the
embedded default, ``robmon worker`` processes in a deployment) claims one at a time: PostgreSQL
with ``FOR UPDATE SKIP LOCKED``, SQLite with a compare-and-set UPDATE. A claimed audit carries a
lease that a heartbeat thread renews; a worker that dies (kill -9, lost machine) leaves a lease
that expires, and the audit is marked interrupted and queued again.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update

from monitor.audit import store
from monitor.audit.memory import BatchSize
from monitor.audit.runner import Plan, execute, plan_from_row
from monitor.audit.store import AuditAlreadyActive, AuditDetail
from monitor.db.models import Audit
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.progress import Reporter, silent
from monitor.registry import Registry

log = logging.getLogger(__name__)
LEASE_SECONDS = 120.0
MAX_BACKOFF = timedelta(days=1)


@dataclass
class Claimed:
    id: int
    plan: Plan


def enqueue(db: Database, plan: Plan, trigger: str, requested_by: str | None = None) -> int | None:
    """Queue an audit of ``plan``; None when the same audit is already queued or running."""
    try:
        return store.create(
            db,
            name=plan.ref.name,
            version=plan.ref.version,
            dataset=plan.config.dataset,
            config=plan.config.canonical(),
            config_hash=plan.config_hash,
            trigger=trigger,
            status="queued",
            requested_by=requested_by,
        )
    except AuditAlreadyActive:
        return None


def claim_next(db: Database, worker: str, lease_seconds: float = LEASE_SECONDS) -> Claimed | None:
    """Take the oldest queued audit for ``worker``; None when the queue is empty."""
    now = utcnow()
    values = dict(
        status="running",
        worker=worker,
        started_at=now,
        heartbeat_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        attempts=Audit.attempts + 1,
    )
    with db.session() as s:
        if db.dialect == "postgresql":
            row = s.execute(
                select(Audit.id)
                .where(Audit.status == "queued")
                .order_by(Audit.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            candidates = [row.id] if row else []
        else:
            candidates = list(
                s.scalars(
                    select(Audit.id).where(Audit.status == "queued").order_by(Audit.id).limit(5)
                )
            )
        for audit_id in candidates:
            claimed = s.execute(
                update(Audit).where(Audit.id == audit_id, Audit.status == "queued").values(**values)
            ).rowcount
            if claimed:
                audit = s.get_one(Audit, audit_id)
                return Claimed(
                    audit_id, plan_from_row(audit.model_name, audit.model_version, audit.config)
                )
    return None


def heartbeat(
    db: Database, audit_id: int, worker: str, lease_seconds: float = LEASE_SECONDS
) -> bool:
    """Extend the lease of a running audit; False if it is no longer ours."""
    now = utcnow()
    with db.session() as s:
        return bool(
            s.execute(
                update(Audit)
                .where(Audit.id == audit_id, Audit.worker == worker, Audit.status == "running")
                .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds))
            ).rowcount
        )


def recover_stale(db: Database, worker_prefix: str | None = None) -> list[int]:
    """Mark interrupted every running audit whose lease expired, or that an earlier incarnation
    of this worker (same ``worker_prefix``, a process that is no longer running) left behind.

    Another live process of the same name on this host (a second scheduler standing by, a
    second worker) keeps its audits: only their leases can say they are gone."""
    now = utcnow()
    with db.session() as s:
        running = s.execute(
            select(Audit.id, Audit.worker, Audit.lease_expires_at).where(Audit.status == "running")
        ).all()
        mine = [
            row for row in running if worker_prefix and (row.worker or "").startswith(worker_prefix)
        ]
        stale = [
            row.id
            for row in running
            if (row.lease_expires_at is not None and row.lease_expires_at < now)
            or (row in mine and _gone(row.worker))
        ]
        for audit_id in stale:
            audit = s.get_one(Audit, audit_id)
            audit.status, audit.finished_at, audit.active_key = "interrupted", now, None
            audit.error = f"worker {audit.worker} stopped before finishing (lease expired)"
    for audit_id in stale:
        log.warning("audit %s was left running by a stopped worker: marked interrupted", audit_id)
    return stale


def _gone(worker: str) -> bool:
    """Whether the process named ``name#pid`` is no longer running here: its pid is ours (an
    earlier incarnation, as in a restarted container) or no process has it."""
    pid = worker.rpartition("#")[2]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        return False
    return False


def due_for_retry(
    db: Database, now: datetime, backoff: timedelta, max_attempts: int
) -> tuple[list[Plan], list[str]]:
    """Plans whose latest audit failed or was interrupted and whose backoff has passed, and
    one line per plan that is waiting or was given up on."""
    latest = (
        select(func.max(Audit.id))
        .group_by(Audit.model_name, Audit.model_version, Audit.config_hash)
        .scalar_subquery()
    )
    due, waiting = [], []
    with db.session() as s:
        rows = s.scalars(
            select(Audit).where(Audit.id.in_(latest), Audit.status.in_(("failed", "interrupted")))
        ).all()
        for audit in rows:
            failures = _consecutive_failures(s, audit)
            plan = plan_from_row(audit.model_name, audit.model_version, audit.config)
            if audit.status == "interrupted":
                due.append(plan)  # not the audit's fault: run it again now
            elif failures >= max_attempts:
                waiting.append(
                    f"{plan.ref}: gave up after {failures} failed audits (last: {audit.error})"
                )
            else:
                delay = min(backoff * 2 ** (failures - 1), MAX_BACKOFF)
                at = (audit.finished_at or audit.created_at) + delay
                if at <= now:
                    due.append(plan)
                else:
                    waiting.append(
                        f"{plan.ref}: retry {failures + 1} after "
                        f"{at.isoformat(timespec='seconds')} (last: {audit.error})"
                    )
    return due, waiting


def requeue_interrupted(db: Database) -> list[int]:
    """Queue again every audit whose latest run was interrupted (a stopped worker's), after
    marking interrupted those whose lease expired. Returns the new queued audits' ids."""
    recover_stale(db)
    latest = (
        select(func.max(Audit.id))
        .group_by(Audit.model_name, Audit.model_version, Audit.config_hash)
        .scalar_subquery()
    )
    with db.session() as s:
        rows = s.execute(
            select(Audit.id, Audit.model_name, Audit.model_version, Audit.config).where(
                Audit.id.in_(latest), Audit.status == "interrupted"
            )
        ).all()
    queued = []
    for row in rows:
        new_id = enqueue(db, plan_from_row(row.model_name, row.model_version, row.config), "retry")
        if new_id is not None:
            log.info("audit %s was interrupted: queued again as audit %s", row.id, new_id)
            queued.append(new_id)
    return queued


def _consecutive_failures(session, audit: Audit) -> int:
    last_success = (
        session.scalar(
            select(func.max(Audit.id)).where(
                Audit.model_name == audit.model_name,
                Audit.model_version == audit.model_version,
                Audit.config_hash == audit.config_hash,
                Audit.status == "succeeded",
            )
        )
        or 0
    )
    return session.scalar(
        select(func.count()).where(
            Audit.model_name == audit.model_name,
            Audit.model_version == audit.model_version,
            Audit.config_hash == audit.config_hash,
            Audit.status == "failed",
            Audit.id > last_success,
        )
    )


def run_claimed(
    db: Database,
    registry: Registry,
    claimed: Claimed,
    worker: str,
    *,
    stop: threading.Event | None = None,
    device: str | None = None,
    batch_size: BatchSize | int | str = "auto",
    report: Reporter = silent,
    lease_seconds: float = LEASE_SECONDS,
) -> AuditDetail:
    """Execute a claimed audit while a thread renews its lease; ``stop`` interrupts it."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(lease_seconds / 4):
            if not heartbeat(db, claimed.id, worker, lease_seconds):
                log.warning("lost the lease of audit %s", claimed.id)

    def checked(task: str, finished: float, total: float | None) -> None:
        if stop is not None and stop.is_set():
            raise KeyboardInterrupt  # the runner records the audit as interrupted
        report(task, finished, total)

    thread = threading.Thread(target=beat, name=f"heartbeat-{claimed.id}", daemon=True)
    thread.start()
    try:
        return execute(db, registry, claimed.id, claimed.plan, device, batch_size, checked)
    finally:
        done.set()
        thread.join(timeout=5)
