"""`robmon config` and `robmon db ...`: settings and schema migrations."""

from __future__ import annotations

import typer

from monitor.cli.base import JSON_OPTION, app, command_group, emit_json, print_table, say, state

db_app = command_group("db", help="Migrate the database (Alembic revisions in migrations/).")


@app.command("config")
def show_config(as_json: bool = JSON_OPTION) -> None:
    """Print the effective settings (passwords and URL tokens masked) and where each came from.

    A robmon.toml with an invalid [alerts] table (a webhook that is not http or https, say) is
    refused with one sentence."""
    from monitor.alerts.settings import AlertSettings

    AlertSettings.from_settings(state.settings())  # validated as every service reads it
    settings = state.settings().public_dict()
    if as_json:
        emit_json(settings)
        return
    rows = [
        (key, settings[key], settings["sources"].get(key, ""))
        for key in ("home", "db_url", "mlflow_tracking_uri", "mlflow_artifact_root", "input_root")
    ]
    rows.append(("config_file", settings["config_file"] or "(none)", ""))
    rows.append(("mlflow_telemetry", settings["mlflow_telemetry"], ""))
    webhook = settings["tables"].get("alerts", {}).get("webhook", {}).get("url")
    if webhook:
        rows.append(("alerts.webhook.url", webhook, "robmon.toml"))
    print_table("robmon settings", ("setting", "value", "from"), rows)


@db_app.command("upgrade")
def db_upgrade(
    revision: str = typer.Option("head", help="Target revision."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from monitor.db import migrate
    from monitor.db.session import create_db_engine

    engine = create_db_engine(state.settings().db_url)
    try:
        before = migrate.schema_state(engine).current
        migrate.upgrade(engine, revision)
        after = migrate.schema_state(engine)
    finally:
        engine.dispose()
    _report_revision(before, after.current, after.head, as_json)


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision, or 'base' for an empty schema."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Revert migrations down to REVISION (data in dropped tables is lost)."""
    from monitor.db import migrate
    from monitor.db.session import create_db_engine

    engine = create_db_engine(state.settings().db_url)
    try:
        before = migrate.schema_state(engine).current
        migrate.downgrade(engine, revision)
        after = migrate.schema_state(engine)
    finally:
        engine.dispose()
    _report_revision(before, after.current, after.head, as_json)


@db_app.command("current")
def db_current(as_json: bool = JSON_OPTION) -> None:
    """Show the database's revision and whether it is up to date."""
    from monitor.config import mask_secrets
    from monitor.db import migrate
    from monitor.db.session import create_db_engine

    settings = state.settings()
    engine = create_db_engine(settings.db_url)
    try:
        current = migrate.schema_state(engine)
    finally:
        engine.dispose()
    data = {
        "db_url": mask_secrets(settings.db_url),
        "current": current.current,
        "head": current.head,
        "up_to_date": current.is_current,
    }
    if as_json:
        emit_json(data)
    else:
        status = "up to date" if current.is_current else "behind: run `robmon db upgrade`"
        say(
            f"{data['db_url']}: revision {current.current or '(empty)'} ({status}; "
            f"newest {current.head})"
        )


def _report_revision(before: str | None, after: str | None, head: str, as_json: bool) -> None:
    if as_json:
        emit_json({"from": before, "to": after, "head": head})
    elif before == after:
        say(f"database already at {after or '(empty)'}")
    else:
        say(f"database migrated from {before or '(empty)'} to {after or '(empty)'}")
