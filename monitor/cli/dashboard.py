"""`robmon dashboard` (the Dash app alone) and `robmon users add|remove|list` (who may triage)."""

from __future__ import annotations

import getpass

import typer

from monitor.cli.base import (
    JSON_OPTION,
    PORT_RANGE,
    app,
    command_group,
    emit_json,
    note,
    print_table,
    say,
    state,
)

users_app = command_group("users", help="Dashboard users (viewer or triager).")

HOST = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only).")
PORT = typer.Option(8050, **PORT_RANGE, help="Port to listen on.")
ALLOW_ANONYMOUS_VIEW = typer.Option(
    False,
    "--allow-anonymous-view",
    help="Serve beyond this machine (--host) even with no dashboard users: anyone who reaches "
    "it sees every alert and source address.",
)


def serve_dashboard(host: str, port: int, allow_anonymous_view: bool = False) -> None:
    """Run the dashboard until interrupted, with waitress (a production WSGI server)."""
    from waitress import serve

    from dashboards.app import create_app
    from dashboards.auth import refuse_anonymous_exposure

    refuse_anonymous_exposure(state.settings(), host, allow_anonymous_view)
    dash_app = create_app(state.settings(), state.database())
    note(f"dashboard on http://{host}:{port}/ (Ctrl-C stops it)")
    serve(dash_app.server, host=host, port=port, threads=8, _quiet=True)


def dashboard_server(host: str, port: int, allow_anonymous_view: bool = False):
    """A dashboard server to run in a thread and stop with ``shutdown()`` (robmon serve)."""
    from werkzeug.serving import make_server

    from dashboards.app import create_app
    from dashboards.auth import refuse_anonymous_exposure

    refuse_anonymous_exposure(state.settings(), host, allow_anonymous_view)
    dash_app = create_app(state.settings(), state.database())
    return make_server(host, port, dash_app.server, threaded=True)


@app.command("dashboard")
def dashboard(
    host: str = HOST, port: int = PORT, allow_anonymous_view: bool = ALLOW_ANONYMOUS_VIEW
) -> None:
    """Serve the security team's dashboard (audits, sources, alert triage)."""
    serve_dashboard(host, port, allow_anonymous_view)


@users_app.command("add")
def add_user(
    name: str = typer.Argument(..., help="User name."),
    role: str = typer.Option("triager", help="viewer or triager."),
    password: str | None = typer.Option(
        None, help="Password (prompted when omitted; use the prompt outside scripts)."
    ),
) -> None:
    """Add or replace a dashboard user (stored hashed in $ROBMON_HOME/dashboard-users.toml)."""
    from dashboards.auth import save_user

    if password is None:
        password = getpass.getpass(f"password for {name}: ")
        if password != getpass.getpass("again: "):
            raise typer.BadParameter("the passwords differ")
    if len(password) < 8:
        raise typer.BadParameter("use at least 8 characters", param_hint="--password")
    path = save_user(state.settings(), name, password, role)
    say(f"{name} ({role}) saved in {path}")


@users_app.command("remove")
def remove_user(name: str = typer.Argument(..., help="User name.")) -> None:
    """Remove a dashboard user; their signed-in sessions end at their next request."""
    from dashboards.auth import remove_user as remove

    path = remove(state.settings(), name)
    say(f"{name} removed from {path}")


@users_app.command("list")
def list_users(as_json: bool = JSON_OPTION) -> None:
    """Dashboard users and their roles (never their passwords)."""
    from dashboards.auth import load_users

    users = [{"name": u.name, "role": u.role} for u in load_users(state.settings()).values()]
    if as_json:
        emit_json(users)
    else:
        print_table("dashboard users", ("user", "role"), [(u["name"], u["role"]) for u in users])
