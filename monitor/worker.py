"""`robmon worker`: claims queued audits from the database and runs them, one at a time.

Any number of workers (on any machines, with ``--device cuda`` where there are GPUs) share one
queue: PostgreSQL hands each queued audit to exactly one of them (``FOR UPDATE SKIP LOCKED``),
and a heartbeat keeps the claim's lease alive. A worker that dies leaves a lease that expires;
the next worker to look marks that audit interrupted and queues it again, so it is finished
by someone else.
"""

from __future__ import annotations

import logging
import time

from monitor import metrics
from monitor.audit import queue
from monitor.audit.memory import BatchSize
from monitor.errors import RobmonError
from monitor.jobs import JobContext

log = logging.getLogger(__name__)


def run_worker(
    context: JobContext,
    *,
    device: str | None = None,
    poll: float = 5.0,
    once: bool = False,
    lease_seconds: float = queue.LEASE_SECONDS,
) -> list[str]:
    """Run queued audits until ``context.stop`` is set (with ``once``: until the queue is
    empty). Returns one line per audit run."""
    finished: list[str] = []
    batch = audit_batch_size(context)
    while not context.stop.is_set():
        queue.requeue_interrupted(context.db)
        claimed = queue.claim_next(context.db, context.worker, lease_seconds)
        if claimed is None:
            if once:
                break
            context.stop.wait(poll)
            continue
        finished.append(_run(context, claimed, device, batch, lease_seconds))
    return finished


def audit_batch_size(context: JobContext) -> BatchSize:
    """``[watch] batch_size`` where set, else ``[audit] batch_size`` (default auto), with the
    ``[audit] memory_limit``."""
    audit = context.watch.audit
    chosen = context.settings.section("watch").get("batch_size", audit.get("batch_size", "auto"))
    return BatchSize.of(chosen, audit.get("memory_limit"))


def _run(
    context: JobContext,
    claimed: queue.Claimed,
    device: str | None,
    batch: BatchSize,
    lease_seconds: float,
) -> str:
    log.info("%s runs audit %s of %s", context.worker, claimed.id, claimed.plan.ref)
    started = time.perf_counter()
    outcome = "succeeded"
    try:
        audit = queue.run_claimed(
            context.db,
            context.registry,
            claimed,
            context.worker,
            stop=context.stop,
            device=device or context.watch.device,
            batch_size=batch,
            lease_seconds=lease_seconds,
        )
        line = f"audit {audit.id} of {claimed.plan.ref}: succeeded, score {audit.score:.1f}"
    except KeyboardInterrupt:
        outcome = "interrupted"
        line = f"audit {claimed.id} of {claimed.plan.ref}: interrupted"
    except RobmonError as err:  # recorded on the audit; the worker goes on
        outcome = "failed"
        line = f"audit {claimed.id} of {claimed.plan.ref}: failed: {err}"
    metrics.AUDIT_SECONDS.labels(outcome).observe(time.perf_counter() - started)
    log.info(line)
    return line
