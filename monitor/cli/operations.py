"""`robmon scheduler`, `robmon jobs list` and `robmon serve`: the long-running services."""

from __future__ import annotations

import logging
import signal
import threading

import typer

from monitor.cli.base import (
    JSON_OPTION,
    METRICS_HOST,
    METRICS_PORT,
    PORT_RANGE,
    app,
    command_group,
    emit_json,
    note,
    print_table,
    say,
    state,
)

jobs_app = command_group("jobs", help="Scheduled jobs and their outcomes.")
log = logging.getLogger(__name__)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        note(f"received {signal.Signals(signum).name}: finishing up ...")
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def _service_logging() -> None:
    """Long-running services log their activity (INFO) unless --debug asked for more."""
    if not state.debug:
        logging.getLogger("monitor").setLevel(logging.INFO)


def start_health(host: str, port: int | None, alive=lambda: True) -> None:
    """Serve /healthz and /metrics for this service when a port is given."""
    if port is None:
        return
    from monitor.service import start_health_server

    server = start_health_server(host, port, state.database(), state.registry(), alive)
    note(f"health on http://{host}:{server.server_port}/healthz, metrics on /metrics")


def job_context(name: str | None, kind: str = "scheduler"):
    """The context jobs run on. The settings its jobs read are checked here, before any job
    runs or a lease is taken: a bad [watch] or [alerts] table (a webhook that is not http or
    https) stops the scheduler in one sentence, not in each job's traceback."""
    from monitor.alerts.settings import AlertSettings
    from monitor.jobs import JobContext
    from monitor.scheduler import worker_name
    from monitor.watch import WatchSettings

    settings = state.settings()
    if kind == "scheduler":  # the scheduler's jobs evaluate alerts and send webhooks
        AlertSettings.from_settings(settings)
    worker = worker_name(kind) if not name else f"{name}#{worker_name(kind).split('#')[1]}"
    return JobContext(
        db=state.database(),
        registry=state.registry(),
        settings=settings,
        watch=WatchSettings.from_settings(settings),
        worker=worker,
    )


@app.command("scheduler")
def scheduler(
    poll_interval: float | None = typer.Option(
        None, help="Seconds between registry polls (default [watch].poll_interval, 300)."
    ),
    once: bool = typer.Option(
        False, help="Run one registry poll (and the queued audits) now, then exit."
    ),
    sweep: bool = typer.Option(False, help="With --once: also run the nightly sweep."),
    name: str | None = typer.Option(None, help="Worker name (default scheduler@HOST)."),
    metrics_port: int | None = METRICS_PORT,
    metrics_host: str = METRICS_HOST,
    as_json: bool = JSON_OPTION,
) -> None:
    """Audit new model versions and moved aliases; re-audit watched aliases nightly."""
    from monitor.scheduler import run_once, run_scheduler

    context = job_context(name)
    if once:
        result = run_once(context, sweep=sweep)
        if as_json:
            emit_json(result)
            return
        for job, detail in result.items():
            say(f"{job}: {detail.get('status')}")
            for key in ("enqueued", "reused", "skipped", "waiting", "audits", "error"):
                values = detail.get(key) or []
                for line in [values] if isinstance(values, str) else values:
                    say(f"  {key}: {line}")
        failed = [job for job, d in result.items() if d.get("status") == "failed"]
        if failed:
            raise typer.Exit(1)
        return
    if sweep:
        raise typer.BadParameter("--sweep goes with --once (the daemon sweeps on its schedule)")
    _service_logging()
    context.stop = _stop_on_signals()
    start_health(metrics_host, metrics_port)
    note(f"scheduler {context.worker} running; Ctrl-C or SIGTERM stops it")
    run_scheduler(context, poll_interval)


@app.command("worker")
def worker(
    device: str | None = typer.Option(
        None, help="cpu or cuda (default [watch].device, else CUDA when available)."
    ),
    poll: float = typer.Option(5.0, help="Seconds between looks at an empty queue."),
    once: bool = typer.Option(False, help="Run the queued audits, then exit."),
    name: str | None = typer.Option(None, help="Worker name (default worker@HOST)."),
    lease: float = typer.Option(
        120.0,
        help="Seconds a claim lives without a heartbeat (a dead worker's audit is "
        "queued again after this).",
    ),
    metrics_port: int | None = METRICS_PORT,
    metrics_host: str = METRICS_HOST,
    as_json: bool = JSON_OPTION,
) -> None:
    """Claim queued audits from the database and run them (scale-out, GPU machines)."""
    from monitor.worker import run_worker

    if poll <= 0 or lease <= 0:
        raise typer.BadParameter("--poll and --lease must be positive")
    context = job_context(name, kind="worker")
    _service_logging()
    context.stop = _stop_on_signals()
    start_health(metrics_host, metrics_port)
    if not once:
        note(f"worker {context.worker} waiting for audits; Ctrl-C or SIGTERM stops it")
    finished = run_worker(context, device=device, poll=poll, once=once, lease_seconds=lease)
    if as_json:
        emit_json({"worker": context.worker, "audits": finished})
        return
    for line in finished:
        say(line)
    if once and not finished:
        say("the audit queue is empty")


@jobs_app.command("list")
def list_jobs(as_json: bool = JSON_OPTION) -> None:
    """Each scheduled job, its next run and its last outcome; the audit queue; skipped models."""
    from sqlalchemy import func, select

    from monitor.db.models import Audit
    from monitor.leases import current_holder
    from monitor.scheduler import LEASE_NAME, jobs_overview

    db = state.database()
    infos = jobs_overview(db)
    with db.session() as s:
        counts = dict(
            s.execute(
                select(Audit.status, func.count())
                .where(Audit.status.in_(("queued", "running")))
                .group_by(Audit.status)
            ).all()
        )
    holder = current_holder(db, LEASE_NAME)
    poll = next(i for i in infos if i.job == "registry-poll")
    data = {
        "active_scheduler": holder[0] if holder else None,
        "jobs": [
            {
                "job": i.job,
                "description": i.description,
                "next_run": i.next_run,
                "last_started": i.last_started,
                "last_status": i.last_status,
                "last_detail": i.last_detail,
            }
            for i in infos
        ],
        "queue": {"queued": counts.get("queued", 0), "running": counts.get("running", 0)},
        "skipped": poll.last_detail.get("skipped", []),
        "waiting": poll.last_detail.get("waiting", []),
    }
    if as_json:
        emit_json(data)
        return
    say(
        f"active scheduler: {data['active_scheduler'] or 'none'}; audit queue: "
        f"{data['queue']['queued']} queued, {data['queue']['running']} running"
    )
    print_table(
        "scheduled jobs",
        ("job", "what", "next run (UTC)", "last run (UTC)", "last outcome"),
        [
            (
                i.job,
                i.description,
                i.next_run.strftime("%Y-%m-%d %H:%M:%S") if i.next_run else "",
                i.last_started.strftime("%Y-%m-%d %H:%M:%S") if i.last_started else "never",
                _outcome(i.last_status, i.last_detail),
            )
            for i in infos
        ],
    )
    for line in data["skipped"]:
        say(f"skipped: {line}")
    for line in data["waiting"]:
        say(f"waiting: {line}")


def _outcome(status: str | None, detail: dict) -> str:
    if status is None:
        return ""
    if status == "failed":
        return f"failed: {detail.get('error')}"
    parts = [
        f"{len(detail[k])} {k}"
        for k in ("enqueued", "reused", "skipped", "audits")
        if detail.get(k)
    ]
    return f"{status}" + (f" ({', '.join(parts)})" if parts else "")


@app.command("serve")
def serve(
    poll_interval: float | None = typer.Option(None, help="Seconds between registry polls."),
    no_ingest: bool = typer.Option(False, "--no-ingest", help="Do not follow [ingest].paths."),
    no_dashboard: bool = typer.Option(False, "--no-dashboard", help="Do not serve the dashboard."),
    host: str = typer.Option("127.0.0.1", help="Dashboard address (127.0.0.1: this machine)."),
    port: int = typer.Option(8050, **PORT_RANGE, help="Dashboard port."),
    allow_anonymous_view: bool = typer.Option(
        False,
        "--allow-anonymous-view",
        help="Serve the dashboard beyond this machine even with no dashboard users.",
    ),
    metrics_port: int | None = METRICS_PORT,
    metrics_host: str = METRICS_HOST,
) -> None:
    """Scheduler, a following ingester ([ingest].paths) and the dashboard in one process."""
    from monitor.ingest.pipeline import Ingester
    from monitor.ingest.settings import IngestSettings
    from monitor.scheduler import run_scheduler

    if not no_dashboard:  # before anything starts: a refusal leaves nothing behind
        from dashboards.auth import refuse_anonymous_exposure

        refuse_anonymous_exposure(state.settings(), host, allow_anonymous_view)
    _service_logging()
    context = job_context(None)
    context.stop = stop = _stop_on_signals()
    threads = [
        threading.Thread(target=run_scheduler, args=(context, poll_interval), name="scheduler")
    ]
    ingest = IngestSettings.from_settings(context.settings)
    if ingest.paths and not no_ingest:
        ingester = Ingester(
            context.db,
            context.registry,
            context.settings,
            batch_size=ingest.batch_size,
            keep_flagged=ingest.keep_flagged,
            device=ingest.device,
            limits=ingest.limits(context.settings),
        )
        threads.append(
            threading.Thread(
                target=ingester.follow_files,
                args=(list(ingest.paths), stop, ingest.poll_interval),
                name="ingester",
            )
        )
    else:
        note("no [ingest].paths configured: serving without an ingester")
    web = None
    if not no_dashboard:
        from monitor.cli.dashboard import dashboard_server

        web = dashboard_server(host, port, allow_anonymous_view)
        threads.append(threading.Thread(target=web.serve_forever, name="dashboard"))
        note(f"dashboard on http://{host}:{port}/")
    for thread in threads:
        thread.start()
    start_health(metrics_host, metrics_port, lambda: all(t.is_alive() for t in threads))
    note(f"serving ({', '.join(t.name for t in threads)}); Ctrl-C or SIGTERM stops")
    try:
        while not stop.wait(0.5):
            if not all(t.is_alive() for t in threads):
                dead = [t.name for t in threads if not t.is_alive()]
                log.error("%s stopped unexpectedly; shutting down", ", ".join(dead))
                stop.set()
    finally:
        stop.set()
        if web is not None:
            web.shutdown()
        for thread in threads:
            thread.join(timeout=120)
    note("stopped cleanly")
