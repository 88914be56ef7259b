"""`robmon guard`: the inline guard. `wrap` registers a guarded version (serve it with `mlflow
models serve`), `check` answers for image files, `refuse` / `allow` / `clear` give a source a
standing order at the guard (audit trail), `orders` lists them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from monitor.cli.base import (
    JSON_OPTION,
    command_group,
    emit_json,
    fmt,
    limit_option,
    note,
    print_table,
    say,
    state,
)
from monitor.errors import RobmonError

guard_app = command_group(
    "guard",
    help="The inline guard: allow, review or refuse each request before the model answers.",
)
BY = typer.Option(..., "--by", help="Who does this (recorded in the audit trail).")
NOTE = typer.Option(None, "--note", help="Why (recorded in the audit trail).")
ALERT = typer.Option(None, "--alert", help="The incident this order is about (its trail shows it).")


def _policy(**options: object):
    """The [guard] table with the options given on the command line over it."""
    from monitor.guard.policy import GuardPolicy

    table = dict(state.settings().section("guard"))
    table.update({k: v for k, v in options.items() if v is not None})
    return GuardPolicy.from_table(table)


@guard_app.command("wrap")
def wrap(
    model: str = typer.Argument(..., help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS."),
    refuse: str | None = typer.Option(
        None, help="Detector tier that refuses: strong, combined, squeeze or none ([guard])."
    ),
    review: str | None = typer.Option(
        None, help="Tier that sends to review: strong, combined, squeeze, low_confidence, none."
    ),
    uncalibrated: str | None = typer.Option(
        None, help="What a version without calibration answers: allow, review or refuse."
    ),
    incident_severity: str | None = typer.Option(
        None, help="Open incidents of this severity or above act: low, medium, high, critical."
    ),
    incident_action: str | None = typer.Option(
        None, help="What they do to their source's requests: refuse or review."
    ),
    publish: str | None = typer.Option(
        None,
        help="Where requests go as production records: a JSON Lines file or "
        "redis://HOST:PORT[/DB]/STREAM (the ingester reads either).",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a guarded version of MODEL: its pyfunc answers with a verdict per request."""
    from monitor.guard.wrap import wrap_model

    policy = _policy(
        refuse=refuse,
        review=review,
        uncalibrated=uncalibrated,
        incident_severity=incident_severity,
        incident_action=incident_action,
        publish=publish,
    )
    parent, guarded = wrap_model(state.registry(), model, policy, state.settings())
    if as_json:
        emit_json({"parent": parent.uri, "guarded": guarded.uri, "policy": policy})
        return
    say(f"registered {guarded} guarding {parent}")
    say(
        f"refuse on {policy.refuse}, review on {policy.review}, uncalibrated: "
        f"{policy.uncalibrated}; open {policy.incident_severity}+ incidents: "
        f"{policy.incident_action}; records to {policy.publish or 'nowhere (set --publish)'}"
    )
    say(f"serve it: mlflow models serve -m {guarded.uri} --env-manager local")
    if not policy.publish:
        note("without --publish the out-of-band monitor sees none of the guarded traffic.")


@guard_app.command("check")
def check(
    model: str = typer.Argument(..., help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS."),
    inputs: list[Path] = typer.Argument(..., help="PNG/JPEG image files or .npy arrays."),
    source: str = typer.Option(..., help="Who the requests come from."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The guard's verdicts for image files, as a guarded model would answer them (nothing is
    published)."""
    import base64

    from monitor.guard.guard import Guard

    rows = []
    for path in inputs:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise RobmonError(f"cannot read {path}: {err.strerror}.") from None
        kind = "npy_b64" if path.suffix == ".npy" else "png_b64"
        rows.append({"source": source, "id": path.name, kind: base64.b64encode(data).decode()})
    # a trial: nothing is published to the production log
    policy = dataclasses.replace(_policy(), publish="")
    guard = Guard(model, settings=state.settings(), db=state.database(), policy=policy)
    try:
        verdicts = guard.check_rows(rows)
    finally:
        guard.close()
    if as_json:
        emit_json([v.as_dict() for v in verdicts])
        return
    print_table(
        f"guard verdicts for {guard.ref}",
        ["input", "verdict", "prediction", "confidence", "reason"],
        [[v.request_id, v.verdict, v.predicted, fmt(v.confidence), v.reason] for v in verdicts],
    )


ORDERS = {
    "refuse": "Refuse every request of SOURCE at the guard, whatever detectors and incidents say.",
    "allow": "Answer every request of SOURCE at the guard, whatever detectors and incidents say.",
    "clear": "End SOURCE's order: the policy decides again.",
}


def _order_command(action: str) -> None:
    """``robmon guard refuse|allow|clear SOURCE --by NAME [--note] [--alert ID]``."""

    def order(
        source: str,
        by: str = BY,
        note: str | None = NOTE,
        alert: int | None = ALERT,
        as_json: bool = JSON_OPTION,
    ) -> None:
        from monitor.guard.sources import set_override

        given = set_override(state.database(), source, action, by, note, alert)
        if as_json:
            emit_json(given)
            return
        done = "back to the policy" if action == "clear" else f"on {action}"
        say(f"source {source} is {done} at the guard (order {given.id} by {given.actor}).")

    order.__doc__ = ORDERS[action]
    guard_app.command(action)(order)


for _action in ORDERS:
    _order_command(_action)


@guard_app.command("orders")
def orders(
    history: bool = typer.Option(False, help="Every order given (the audit trail), newest first."),
    source: str | None = typer.Option(None, help="Only this source (with --history)."),
    limit: int = limit_option(100, "Most orders to show (with --history)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The sources on refuse or allow at the guard (--history: every order given)."""
    from monitor.guard.sources import override_history, overrides_in_force

    db = state.database()
    rows = override_history(db, source, limit) if history else overrides_in_force(db)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        say("no orders given." if history else "no source is on refuse or allow.")
        return
    print_table(
        "guard orders" if history else "guard orders in force",
        ["id", "source", "order", "by", "at", "incident", "note"],
        [
            [o.id, o.source, o.action, o.actor, f"{o.at:%Y-%m-%d %H:%M}", o.alert_id, o.note]
            for o in rows
        ],
    )
