"""APScheduler wiring: the registry poll, the nightly sweep and the audit queue as jobs in the
project's database (SQLAlchemyJobStore), behind a lease so that only one scheduler is active.

    run_once(context, sweep)        one poll (and sweep), then the queue; for cron/CronJobs
    run_scheduler(context, ...)     leader election + BackgroundScheduler until ``stop`` is set

Jobs: missed runs coalesce into one, ``max_instances=1``, a generous misfire grace time. A
standby scheduler polls the lease and takes over when the active one stops renewing it. On
taking over, audits left running by a dead process are marked interrupted and run again.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from monitor import jobs, leases
from monitor.audit import queue
from monitor.db.models import JobRun, SchedulerJob
from monitor.db.session import Database
from monitor.jobs import JobContext

log = logging.getLogger(__name__)
LEASE_NAME = "scheduler"
QUEUE_INTERVAL = 5.0
JOB_DESCRIPTIONS = {
    "registry-poll": "audit new versions and moved aliases; retry failed audits",
    "nightly-sweep": "re-audit watched aliases and stale audits",
    "audit-queue": "run queued audits in this process",
    "alert-evaluation": "run the alert rules over newly ingested inputs",
    "notifications": "deliver webhook notifications from the outbox",
    "detector-calibration": "calibrate detectors of versions the ingester met uncalibrated",
}
CALIBRATION_INTERVAL = 30.0
NOTIFY_INTERVAL = 10.0


def worker_name(kind: str = "scheduler") -> str:
    """``kind@host#pid``: the part before ``#`` names this worker across restarts."""
    return f"{kind}@{socket.gethostname()}#{os.getpid()}"


def run_once(context: JobContext, sweep: bool = False) -> dict[str, Any]:
    """One registry poll (and the sweep), every queued audit, one due detector calibration,
    one alert evaluation and the due notifications; for cron-driven setups."""
    queue.recover_stale(context.db, context.worker.split("#")[0] + "#")
    result = {"registry-poll": jobs.recorded("registry-poll", jobs.poll_registry, context)}
    if sweep:
        result["nightly-sweep"] = jobs.recorded("nightly-sweep", jobs.nightly_sweep, context)
    if context.watch.run_audits:
        result["audit-queue"] = jobs.recorded("audit-queue", jobs.run_audit_queue, context)
    result["detector-calibration"] = jobs.recorded(
        "detector-calibration", jobs.calibrate_detectors, context
    )
    result["alert-evaluation"] = jobs.recorded("alert-evaluation", jobs.evaluate_alerts, context)
    result["notifications"] = jobs.recorded("notifications", jobs.deliver_notifications, context)
    return result


def build_scheduler(context: JobContext, poll_interval: float | None = None) -> Any:
    """A BackgroundScheduler with the jobs in the database job store (not started)."""
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
    from apscheduler.schedulers.background import BackgroundScheduler

    watch = context.watch
    scheduler = BackgroundScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(
                engine=context.db.engine, tablename=SchedulerJob.__tablename__
            )
        },
        executors={"default": ThreadPoolExecutor(4)},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 24 * 3600},
    )
    scheduler.add_job(
        "monitor.jobs:registry_poll_job",
        "interval",
        seconds=poll_interval or watch.poll_interval,
        id="registry-poll",
        replace_existing=True,
        next_run_time=datetime.now(UTC),
    )
    scheduler.add_job(
        "monitor.jobs:nightly_sweep_job",
        "cron",
        id="nightly-sweep",
        replace_existing=True,
        **watch.sweep_fields(),
    )
    if watch.run_audits:
        scheduler.add_job(
            "monitor.jobs:audit_queue_job",
            "interval",
            seconds=QUEUE_INTERVAL,
            id="audit-queue",
            replace_existing=True,
        )
    scheduler.add_job(
        "monitor.jobs:calibration_job",
        "interval",
        seconds=CALIBRATION_INTERVAL,
        id="detector-calibration",
        replace_existing=True,
    )
    evaluation = context.evaluator().settings.evaluation_interval
    scheduler.add_job(
        "monitor.jobs:alert_evaluation_job",
        "interval",
        seconds=evaluation,
        id="alert-evaluation",
        replace_existing=True,
    )
    scheduler.add_job(
        "monitor.jobs:notifications_job",
        "interval",
        seconds=NOTIFY_INTERVAL,
        id="notifications",
        replace_existing=True,
    )
    return scheduler


def run_scheduler(
    context: JobContext, poll_interval: float | None = None, lease_ttl: float | None = None
) -> None:
    """Hold the scheduler lease and run the jobs until ``context.stop`` is set; stand by while
    another process holds the lease."""
    jobs.install(context)
    lease_ttl = lease_ttl or context.watch.lease_ttl
    scheduler = None
    announced_standby = recovered = False
    held_until = 0.0  # monotonic time until which this process's last renewal holds the lease
    try:
        while not context.stop.is_set():
            try:
                held = leases.acquire(context.db, LEASE_NAME, context.worker, lease_ttl)
            except SQLAlchemyError as err:  # a locked or unreachable database: try again soon
                log.warning("could not renew the scheduler lease (%s); trying again", err)
                held = scheduler is not None and time.monotonic() < held_until
            else:
                if held:
                    held_until = time.monotonic() + lease_ttl * 0.9
            if held:
                if scheduler is None:
                    log.info("%s is the active scheduler", context.worker)
                    if not recovered:
                        queue.recover_stale(context.db, context.worker.split("#")[0] + "#")
                        recovered = True
                    scheduler = build_scheduler(context, poll_interval)
                    scheduler.start()
                    if not context.watch.run_audits and scheduler.get_job("audit-queue"):
                        scheduler.remove_job("audit-queue")  # stored by an earlier setup
                    announced_standby = False
            elif scheduler is not None:
                log.warning("%s lost the scheduler lease; standing by", context.worker)
                scheduler.shutdown(wait=False)
                scheduler = None
            elif not announced_standby:
                holder = leases.current_holder(context.db, LEASE_NAME)
                log.info("standing by: %s is the active scheduler", holder[0] if holder else "?")
                announced_standby = True
            context.stop.wait(lease_ttl / 3)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=True)  # a running audit sees ``stop`` and ends interrupted
        leases.release(context.db, LEASE_NAME, context.worker)


@dataclass
class JobInfo:
    job: str
    description: str
    next_run: datetime | None
    last_started: datetime | None
    last_status: str | None
    last_detail: dict[str, Any]


def jobs_overview(db: Database) -> list[JobInfo]:
    """Each job with its next run (from the job store) and its last recorded outcome."""
    with db.session() as s:
        next_runs = {
            row.id: datetime.fromtimestamp(row.next_run_time, UTC)
            if row.next_run_time is not None
            else None
            for row in s.execute(select(SchedulerJob.id, SchedulerJob.next_run_time))
        }
        infos = []
        for job, description in JOB_DESCRIPTIONS.items():
            last = s.scalars(
                select(JobRun).where(JobRun.job == job).order_by(JobRun.id.desc()).limit(1)
            ).first()
            infos.append(
                JobInfo(
                    job=job,
                    description=description,
                    next_run=next_runs.get(job),
                    last_started=last.started_at if last else None,
                    last_status=last.status if last else None,
                    last_detail=dict(last.detail) if last else {},
                )
            )
    return infos
