"""`robmon models list` and `robmon demo`."""

from __future__ import annotations

import typer

from monitor.cli.base import (
    JSON_OPTION,
    PORT_RANGE,
    app,
    command_group,
    emit_json,
    fmt,
    note,
    print_table,
    progress_bars,
    say,
    state,
)

models_app = command_group("models", help="Models in the MLflow registry.")


def _preset(source: str | None) -> str:
    """``standard`` from "standard preset, audit 7, whole dataset" (older tags: empty)."""
    return source.split(" preset", 1)[0] if source else ""


@models_app.command("list")
def list_models(
    name: str | None = typer.Argument(None, help="Only this registered model."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Registered models with their versions, aliases and last robustness score."""
    models = state.registry().list_models(name)
    if as_json:
        emit_json(
            [
                {
                    "name": m.name,
                    "aliases": m.aliases,
                    "versions": [
                        {
                            "version": v.version,
                            "aliases": v.aliases,
                            "created_at": v.created_at,
                            "dataset": v.tags.get("robustness.dataset"),
                            "robustness_score": _float(v.tags.get("robustness.score")),
                            "robustness_score_source": v.tags.get("robustness.score_source"),
                            "robustness_status": v.tags.get("robustness.status"),
                            "tags": v.tags,
                        }
                        for v in m.versions
                    ],
                }
                for m in models
            ]
        )
        return
    if not models:
        say("no registered models (try `robmon demo --no-serve`)")
        return
    rows = [
        (
            m.name,
            v.version,
            ", ".join(v.aliases),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
            v.tags.get("robustness.dataset", ""),
            fmt(_float(v.tags.get("robustness.score")), 1),
            _preset(v.tags.get("robustness.score_source")),
            v.tags.get("robustness.status", ""),
        )
        for m in models
        for v in m.versions
    ]
    print_table(
        "registered models",
        ("model", "version", "aliases", "created (UTC)", "dataset", "score", "from", "last audit"),
        rows,
    )


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@app.command("demo")
def demo(
    serve: bool = typer.Option(
        True, "--serve/--no-serve", help="Serve the dashboard at the end (--no-serve stops before)."
    ),
    host: str = typer.Option("127.0.0.1", help="Dashboard address (127.0.0.1: this machine)."),
    port: int | None = typer.Option(
        None,
        **PORT_RANGE,
        help="Dashboard port, which must be free (default: 8050, or a free port when 8050 is "
        "taken).",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """The main job on the embedded default: seed demo models, audit them, ingest a production
    log with attackers and raise alerts (reusing whatever an earlier run did)."""
    from monitor.demo import (
        DEMO_PORT,
        audit_demo_models,
        dashboard_port,
        demo_traffic,
        demo_user,
        seed_demo_models,
    )

    if serve:  # before the work: a busy port must not waste it
        chosen = dashboard_port(host, port)
        if port is None and chosen != DEMO_PORT:
            note(f"port {DEMO_PORT} is in use: the dashboard will be served on port {chosen}")
        port = chosen
    registry, settings = state.registry(), state.settings()
    db = state.database()  # the embedded database migrates itself on first use
    with progress_bars(not as_json) as report:
        seeded = seed_demo_models(registry, report)
        audits = audit_demo_models(db, registry, seeded, report)
        traffic = demo_traffic(db, registry, settings, report)
    alerted = traffic.alerted
    user, password = demo_user(settings)
    if as_json:
        emit_json(
            {
                "models": [
                    {
                        "key": m.key,
                        "name": m.ref.name,
                        "version": m.ref.version,
                        "kind": m.kind,
                        "clean_accuracy": m.clean_accuracy,
                        "created": m.created,
                    }
                    for m in seeded
                ],
                "audits": [
                    {
                        "audit_id": a.id,
                        "model": a.model_name,
                        "version": a.model_version,
                        "status": a.status,
                        "clean_accuracy": a.clean_accuracy,
                        "score": a.score,
                        "warnings": a.warnings,
                    }
                    for a in audits
                ],
                "production_log": str(traffic.log),
                "ingest": {
                    "records": traffic.ingest.records,
                    "scored": traffic.ingest.scored,
                    "dead_letters": traffic.ingest.dead_letters,
                    "flagged": traffic.ingest.flagged,
                },
                "alerts": [
                    {
                        "id": a.id,
                        "rule": a.rule,
                        "source": a.source,
                        "severity": a.severity,
                        "summary": a.summary,
                    }
                    for a in traffic.alerts
                ],
                "attackers": traffic.attackers,
                "benign_sources": sorted(traffic.benign),
                "dashboard_user": {"name": user, "password": password, "role": "triager"},
                "dashboard_url": f"http://{host}:{port}/" if serve else None,
            }
        )
    else:
        print_table(
            "demo models",
            ("model", "version", "kind", "test accuracy", "this run"),
            [
                (
                    m.ref.name,
                    m.ref.version,
                    m.kind,
                    fmt(m.clean_accuracy),
                    "registered" if m.created else "reused",
                )
                for m in seeded
            ],
        )
        print_table(
            "robustness audits (FGSM and PGD, L∞ eps 0.1, 0.2, 0.3)",
            ("audit", "model", "version", "clean acc", "score", "credibility"),
            [
                (
                    a.id,
                    a.model_name,
                    a.model_version,
                    fmt(a.clean_accuracy),
                    fmt(a.score, 1),
                    f"{a.warnings} warning(s)" if a.warnings else "passed",
                )
                for a in audits
            ],
        )
        say(
            f"production log {traffic.log}: {traffic.ingest.records} new records this run "
            f"({len(traffic.benign)} benign sources, {len(traffic.attackers)} attacker "
            "addresses)"
        )
        print_table(
            "alerts",
            ("id", "severity", "rule", "source", "attacker kind", "why"),
            [
                (
                    a.id,
                    a.severity,
                    a.rule,
                    a.source,
                    traffic.attackers.get(a.source, "BENIGN?"),
                    a.summary,
                )
                for a in traffic.alerts
            ],
        )
        benign_alerted = sorted(alerted & traffic.benign)
        say(
            f"benign sources alerted: {len(benign_alerted)}"
            + (f" ({', '.join(benign_alerted)})" if benign_alerted else "")
        )
    if not as_json:
        say(
            f"dashboard user: {user} / {password} (a triager; passwords are stored hashed in "
            f"{settings.home / 'dashboard-users.toml'})"
        )
    if serve:
        from monitor.cli.dashboard import serve_dashboard

        serve_dashboard(host, port)
