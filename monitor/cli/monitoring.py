"""`robmon calibrate`, `robmon ingest` and `robmon inputs stats`: production monitoring."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import typer

from monitor.audit.config import eps_text
from monitor.cli.base import (
    JSON_OPTION,
    METRICS_HOST,
    METRICS_PORT,
    app,
    check_choice,
    command_group,
    emit_json,
    fmt,
    limit_option,
    note,
    print_table,
    progress_bars,
    say,
    state,
)

inputs_app = command_group("inputs", help="Scored production inputs.")


@app.command("calibrate")
def calibrate(
    model: str = typer.Argument(..., help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS."),
    dataset: str | None = typer.Option(
        None, help="Clean data (default: the version's robustness.dataset tag)."
    ),
    fpr: float | None = typer.Option(None, help="Target false-positive rate (default 0.05)."),
    eps: str | None = typer.Option(
        None,
        help="L∞ radii of the adversarial inputs detection is measured against, comma "
        "separated, 8/255 works (default: 0.1,0.2,0.3 for grayscale, 2/255,4/255,8/255 colour).",
    ),
    limit: int | None = typer.Option(
        None, help="Calibrate on the first N samples of the dataset (default: all)."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Detector thresholds for a model version at a target false-positive rate."""
    from monitor.audit.config import parse_eps
    from monitor.calibrate import calibrate_model

    db, registry = state.database(), state.registry()
    with progress_bars(not as_json) as report:
        stored = calibrate_model(
            db,
            registry,
            state.settings(),
            model,
            dataset=dataset,
            fpr=fpr,
            eps=parse_eps(eps) if eps else None,
            limit=limit,
            device=device,
            report=report,
        )
    data = {
        "calibration_id": stored.id,
        "model": {"name": stored.model_name, "version": stored.model_version},
        "dataset": stored.dataset,
        "fpr": stored.fpr,
        "eps": stored.eps,
        "created_at": stored.created_at,
        "squeezers": list(stored.thresholds.squeezers),
        "thresholds": {
            "confidence": stored.thresholds.confidence,
            "squeeze": stored.thresholds.squeeze,
            "combined": stored.thresholds.combined.threshold
            if stored.thresholds.combined
            else None,
        },
        "baseline": stored.baseline,
        **{
            k: stored.report[k]
            for k in (
                "best_detector",
                "reason",
                "detectors",
                "candidates",
                "clean_accuracy",
                "n_calibration",
                "n_evaluation",
                "n_adversarial",
            )
        },
    }
    if as_json:
        emit_json(data)
        return
    say(
        f"calibration {stored.id}: {stored.model_name} v{stored.model_version} on "
        f"{stored.dataset}, target FPR {stored.fpr:.0%}, adversarial inputs up to L∞ eps "
        f"{stored.eps:g}"
    )
    say(f"chosen {data['reason']}")
    print_table(
        "squeezer candidates (calibration split)",
        ("squeezer", "clean accuracy", "ROC AUC", "cost (forward passes)", "decision"),
        [
            (
                c["squeezer"],
                fmt(c["clean_accuracy"]),
                fmt(c["roc_auc"]),
                fmt(c.get("cost")),
                c["reason"],
            )
            for c in data["candidates"]
        ],
    )
    rows = []
    for d in data["detectors"]:
        worst = max(d["fpr_benign"].items(), key=lambda kv: kv[1] or 0.0)
        aucs = [v for v in d["roc_auc"].values() if v is not None]
        by_eps = d.get("by_eps") or {}
        counts = _counts_by_eps(d.get("detected") or {})
        rows.append(
            (
                d["detector"],
                ", ".join(
                    f"{eps_text(e)}: {fmt(rate)} ({counts.get(e, '0 of 0')})"
                    for e, rate in by_eps.items()
                ),
                fmt(sum(aucs) / len(aucs) if aucs else None),
                fmt(d["fpr_clean"]),
                f"{fmt(worst[1])} ({worst[0]})",
            )
        )
    print_table(
        "detection on the held-out split (successful adversarial inputs, all attacks per eps)",
        ("detector", "detection per eps", "mean ROC AUC", "FPR clean", "worst benign FPR"),
        rows,
    )
    say(f"best detector for this model: {data['best_detector']}")


def _counts_by_eps(detected: dict[str, list[int]]) -> dict[str, str]:
    """``{"fgsm@0.1": [3, 10], "pgd@0.1": [5, 9]}`` -> ``{"0.1": "8 of 19"}``."""
    totals: dict[str, list[int]] = {}
    for attack, (hits, n) in detected.items():
        total = totals.setdefault(attack.partition("@")[2] or "-", [0, 0])
        total[0] += hits
        total[1] += n
    return {e: f"{h} of {n}" for e, (h, n) in totals.items()}


def _stopper() -> threading.Event:
    stop = threading.Event()

    def handle(_signum: int, _frame: object) -> None:
        note("stopping after the current batch ...")
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


@app.command("ingest")
def ingest(
    paths: list[str] = typer.Argument(
        None, help="JSON Lines files, globs or directories; - for standard input."
    ),
    follow: bool = typer.Option(False, help="Keep reading as files grow, rotate or truncate."),
    redis_stream: str | None = typer.Option(
        None,
        envvar="ROBMON_REDIS_STREAM",
        # no square brackets: help text is rich markup, and "[/DB]" reads as a closing tag
        help="Read a Redis Stream with a consumer group instead: redis://HOST:PORT/STREAM "
        "(or redis://HOST:PORT/DB/STREAM).",
    ),
    group: str = typer.Option("robmon-ingest", help="Consumer group (with --redis-stream)."),
    consumer: str | None = typer.Option(
        None, help="This consumer's name in the group (default HOST-PID)."
    ),
    claim_after: float = typer.Option(
        60.0, help="Take over entries another consumer left unacknowledged this many seconds."
    ),
    drain: bool = typer.Option(
        False, help="With --redis-stream: stop when nothing is left to read (default: run on)."
    ),
    max_deliveries: int | None = typer.Option(
        None,
        min=1,
        help="With --redis-stream: dead-letter an entry delivered more than this many times "
        "(a poison pill; default: [ingest] max_deliveries, 5).",
    ),
    batch_size: int = typer.Option(256, help="Records scored per batch (and per commit)."),
    keep_flagged: Path | None = typer.Option(
        None, help="Keep flagged inputs as PNG files in this folder for review."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    metrics_port: int | None = METRICS_PORT,
    metrics_host: str = METRICS_HOST,
    as_json: bool = JSON_OPTION,
) -> None:
    """Score production records: confidence and feature-squeezing flags, exactly once."""
    from monitor.cli.operations import start_health
    from monitor.ingest.pipeline import Ingester
    from monitor.ingest.settings import IngestSettings

    if batch_size < 1:
        raise typer.BadParameter("must be at least 1", param_hint="--batch-size")
    if bool(paths) == bool(redis_stream):
        raise typer.BadParameter("give files (or -) or --redis-stream, one of the two")
    configured = IngestSettings.from_settings(state.settings())
    ingester = Ingester(
        state.database(),
        state.registry(),
        state.settings(),
        batch_size=batch_size,
        keep_flagged=keep_flagged,
        device=device,
        limits=configured.limits(state.settings()),
    )
    if redis_stream:
        from monitor.ingest.broker import StreamConsumer
        from monitor.ingest.redis_stream import StreamAddress

        stream_consumer = StreamConsumer(
            ingester,
            StreamAddress.parse(redis_stream),
            group,
            consumer,
            claim_after=claim_after,
            max_deliveries=max_deliveries or configured.max_deliveries,
        )
        stop = _stopper()
        start_health(metrics_host, metrics_port)
        summary = stream_consumer.run(stop, drain=drain)
    elif paths == ["-"]:
        summary = ingester.ingest_stream(sys.stdin.buffer)
    elif "-" in paths:
        raise typer.BadParameter("- (standard input) cannot be mixed with files")
    elif follow:
        stop = _stopper()
        start_health(metrics_host, metrics_port)
        summary = ingester.follow_files(paths, stop)
    else:
        summary = ingester.ingest_files(paths)
    data = {
        "records": summary.records,
        "scored": summary.scored,
        "dead_letters": summary.dead_letters,
        "flagged": summary.flagged,
        "uncalibrated": summary.uncalibrated,
        "converted": summary.converted,
        "duplicates": summary.duplicates,
        "seconds": round(summary.seconds, 3),
        "notes": summary.notes,
    }
    if as_json:
        emit_json(data)
        return
    for line in summary.notes:
        note(f"note: {line}")
    rate = summary.records / summary.seconds if summary.seconds else 0.0
    say(
        f"{summary.records} records: {summary.scored} scored ({summary.flagged} flagged"
        + (f", {summary.uncalibrated} without a calibration" if summary.uncalibrated else "")
        + (f", {summary.converted} converted" if summary.converted else "")
        + f"), {summary.dead_letters} dead letters, {summary.duplicates} duplicates, "
        f"{summary.seconds:.1f} s ({rate:.0f} records/s)"
    )


@inputs_app.command("stats")
def inputs_stats(
    by: str = typer.Option("source", help="Group by: source."),
    since: str | None = typer.Option(None, help="ISO time or 30m, 24h, 7d (record time)."),
    model: str | None = typer.Option(None, help="Only inputs of this model."),
    source: str | None = typer.Option(None, help="Only this source."),
    limit: int = limit_option(100, "At most this many sources (most flagged first)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Per source: inputs, flagged rate, mean confidence, largest squeezing divergence."""
    from monitor.ingest.store import source_stats
    from monitor.times import parse_since

    check_choice("--by", by, ("source",))
    stats = source_stats(
        state.database(),
        since=parse_since(since) if since else None,
        model=model,
        source=source,
        limit=limit,
    )
    if as_json:
        emit_json(stats)
        return
    if not stats:
        say("no scored inputs (run `robmon ingest FILE`)")
        return
    print_table(
        "inputs by source",
        (
            "source",
            "inputs",
            "flagged",
            "flagged rate",
            "low-confidence rate",
            "mean confidence",
            "max divergence",
            "converted",
            "last seen (UTC)",
        ),
        [
            (
                s.source,
                s.count,
                s.flagged,
                fmt(s.flagged_rate),
                fmt(s.low_confidence_rate),
                fmt(s.mean_confidence),
                fmt(s.max_divergence),
                s.converted,
                s.last_seen.strftime("%Y-%m-%d %H:%M"),
            )
            for s in stats
        ],
    )
