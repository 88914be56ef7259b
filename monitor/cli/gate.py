"""`robmon gate MODEL --policy FILE`, `robmon gate history MODEL`, `robmon gate rollback`.

Exit status of a decision: 0 passed, 1 failed, 2 could not decide (bad policy, missing audit or
calibration, unreachable MLflow or database).
"""

from __future__ import annotations

from pathlib import Path

import typer

from monitor.cli.base import (
    JSON_OPTION,
    HelpGroup,
    command_group,
    emit_json,
    limit_option,
    print_table,
    progress_bars,
    say,
    state,
)


class _GateGroup(HelpGroup):
    """`robmon gate MODEL ...` means `robmon gate check MODEL ...`."""

    def resolve_command(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args.insert(0, "check")
        return super().resolve_command(ctx, args)


gate_app = command_group(
    "gate",
    cls=_GateGroup,
    help="Release gate: pass or fail a model version on its robustness (exit 0/1/2).",
)


@gate_app.command("check")
def check(
    model: str = typer.Argument(..., help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS."),
    policy: Path = typer.Option(..., "--policy", help="Gate policy (TOML)."),
    baseline: str | None = typer.Option(
        None, help="Compare against this reference (default: the policy's, else champion)."
    ),
    audit_if_missing: bool = typer.Option(
        False, "--audit-if-missing", help="Run the audits the policy needs if they are missing."
    ),
    queue_if_missing: bool = typer.Option(
        False,
        "--queue-if-missing",
        help="Queue missing audits for `robmon worker` processes (the decision is undecided, "
        "exit 2, until they have run).",
    ),
    promote: str | None = typer.Option(
        None, help="Move this alias to the version when (and only when) it passes."
    ),
    summary: Path | None = typer.Option(None, help="Write the decision as Markdown here."),
    device: str | None = typer.Option(None, help="cpu or cuda for audits run by the gate."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Decide whether a model version may be released (also available as `robmon gate MODEL`)."""
    from monitor.errors import RobmonError
    from monitor.gate.decision import GateRun, GateUndecided, as_dict, evaluate
    from monitor.gate.policy import load_policy
    from monitor.gate.record import markdown, record

    parsed = load_policy(policy)
    try:
        db, registry = state.database(), state.registry()
        with progress_bars(not as_json) as report:
            run = GateRun(
                db,
                registry,
                audit_if_missing=audit_if_missing,
                queue_if_missing=queue_if_missing,
                baseline=baseline,
                device=device,
                report=report,
            )
            decision = evaluate(run, model, parsed)
        decision = record(db, registry, decision, parsed, promote)
    except RobmonError as err:
        if err.exit_code == 2:
            raise
        raise GateUndecided(str(err)) from err  # cannot decide: exit 2, not "failed"
    if summary is not None:
        summary.write_text(markdown(decision), encoding="utf-8")
    if as_json:
        emit_json(as_dict(decision))
    else:
        say(
            f"gate {decision.verdict.upper()}: {decision.model} under policy "
            f"{decision.policy_hash} (decision {decision.decision_id})"
        )
        say(decision.reason)
        if decision.audit_id is not None:
            say(f"on audit {decision.audit_id} ({decision.preset} preset)")
        if decision.criteria:
            print_table(
                None,
                ("criterion", "value", "threshold", "baseline", "outcome"),
                [
                    (
                        c.name,
                        _cell(c.actual),
                        _cell(c.threshold),
                        _cell(c.baseline),
                        {True: "pass", False: "FAIL", None: "skipped"}[c.passed],
                    )
                    for c in decision.criteria
                ],
            )
        if decision.promoted_alias:
            say(
                f"promoted {decision.model.name}@{decision.promoted_alias} to version "
                f"{decision.model.version} (was {decision.previous_version or 'unset'}); "
                f"undo with `robmon gate rollback {decision.model.name} "
                f"{decision.promoted_alias}`"
            )
    raise typer.Exit(decision.exit_code)


def _cell(value: object) -> str:
    if value is None:
        return ""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@gate_app.command("history")
def gate_history(
    model: str = typer.Argument(..., help="Registered model name."),
    limit: int = limit_option(50, "At most this many, newest first."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Past gate decisions and rollbacks of a model."""
    from monitor.gate.record import history

    rows = history(state.database(), model, limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        say(f"no gate decisions for {model}")
        return
    print_table(
        f"gate decisions for {model}",
        ("id", "when (UTC)", "version", "verdict", "policy", "baseline", "promoted", "by", "why"),
        [
            (
                r.id,
                r.decided_at.strftime("%Y-%m-%d %H:%M"),
                r.model_version,
                r.verdict,
                r.policy_hash or "",
                r.baseline or "",
                f"{r.promoted_alias} (was {r.previous_version or 'unset'})"
                + (" rolled back" if r.rolled_back_at else "")
                if r.promoted_alias
                else "",
                r.decided_by,
                r.reason,
            )
            for r in rows
        ],
    )


@gate_app.command("rollback")
def gate_rollback(
    model: str = typer.Argument(..., help="Registered model name."),
    alias: str = typer.Argument(..., help="The alias the gate promoted (e.g. champion)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Move an alias back to where it was before the gate's last promotion."""
    from monitor.gate.record import rollback

    result = rollback(state.database(), state.registry(), model, alias)
    if as_json:
        emit_json(result)
    else:
        say(
            f"{model}@{alias} moved back from version {result.from_version} to "
            f"{result.restored_version or '(removed: it was unset)'}"
        )
