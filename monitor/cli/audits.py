"""`robmon audit MODEL` and `robmon audits list|show`."""

from __future__ import annotations

import signal
from pathlib import Path

import typer

from monitor.audit.config import eps_text
from monitor.cli.base import (
    JSON_OPTION,
    app,
    check_choice,
    command_group,
    emit_json,
    fmt,
    note,
    print_table,
    progress_bars,
    say,
    state,
)

audits_app = command_group("audits", help="Past robustness audits.")
# an audit moves queued -> running -> succeeded | failed | interrupted (monitor.db.models.Audit)
AUDIT_STATUSES = ("queued", "running", "succeeded", "failed", "interrupted")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@app.command("audit")
def audit(
    model: str = typer.Argument(..., help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS."),
    dataset: str | None = typer.Option(
        None,
        help="digits, digits28, a .npz file or an image folder "
        "(default: the version's robustness.dataset tag, then robmon.toml [audit].dataset).",
    ),
    attack: list[str] = typer.Option(
        None, "--attack", help="fgsm, pgd and/or apgd (repeatable; default fgsm and pgd)."
    ),
    eps: str | None = typer.Option(
        None,
        help="Comma-separated radii, e.g. 0.1,0.2,0.3 or 8/255 (default by input kind: L∞ "
        "0.1,0.2,0.3 on grayscale, 2/255,4/255,8/255 on colour).",
    ),
    norm: list[str] = typer.Option(None, "--norm", help="linf and/or l2 (repeatable)."),
    steps: int | None = typer.Option(None, help="PGD steps (default 10)."),
    restarts: int | None = typer.Option(None, help="PGD restarts (default 1)."),
    batch_size: str | None = typer.Option(
        None,
        help="Samples per attack batch: auto (the default: measured against the free memory, "
        "halved on out-of-memory) or a number.",
    ),
    memory_limit: str | None = typer.Option(
        None,
        "--memory-limit",
        help="With auto: the most memory the process may hold on the attack device, e.g. 4GB.",
    ),
    limit: int | None = typer.Option(None, help="Audit only the first N samples."),
    seed: int | None = typer.Option(None, help="Random seed (default 0)."),
    surrogate: str | None = typer.Option(
        None,
        help="Torch model to craft transfer attacks on (default for black boxes: the "
        "newest torch model registered for the same dataset).",
    ),
    device: str | None = typer.Option(None, help="cpu or cuda (default: CUDA when available)."),
    adaptive: bool = typer.Option(
        True,
        help="Defended versions: BPDA through non-differentiable transformations, EOT through "
        "randomised ones (--no-adaptive shows what a naive attack would report).",
    ),
    eot_samples: int | None = typer.Option(None, help="EOT draws per gradient (default 10)."),
    force: bool = typer.Option(False, help="Run again even if this audit exists."),
    queue: bool = typer.Option(
        False, "--queue", help="Queue it for `robmon worker` processes instead of running it here."
    ),
    fast: bool = typer.Option(
        False, help="CUDA only: craft attacks with torch.compile, bf16 and channels_last."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Attack a model version now and report its robustness (reuses a matching audit)."""
    from monitor.audit.config import AuditConfig, audit_defaults, parse_eps
    from monitor.audit.memory import BatchSize
    from monitor.audit.report import audit_json
    from monitor.audit.runner import AuditRequest, run_audit
    from monitor.errors import AuditError

    settings = state.settings()
    defaults = audit_defaults(settings.section("audit"))
    batch = BatchSize.of(
        batch_size if batch_size is not None else defaults.get("batch_size", "auto"),
        memory_limit if memory_limit is not None else defaults.get("memory_limit"),
    )
    registry, db = state.registry(), state.database()
    chosen = {
        "dataset": dataset,
        "attacks": tuple(attack) if attack else None,
        "norms": tuple(norm) if norm else None,
        "eps": parse_eps(eps) if eps else None,
        "steps": steps,
        "restarts": restarts,
        "limit": limit,
        "seed": seed,
        "surrogate": surrogate,
        "adaptive": None if adaptive else False,
        "eot_samples": eot_samples,
    }
    fields = {k: v for k, v in defaults.items() if k in AuditConfig.__dataclass_fields__}
    fields.update({k: v for k, v in chosen.items() if v is not None})
    if not fields.get("dataset"):
        ref = registry.resolve(model)
        fields["dataset"] = registry.version_tags(ref).get("robustness.dataset")
        if not fields["dataset"]:
            raise AuditError(
                f"{ref} has no robustness.dataset tag and no dataset is configured; pass --dataset."
            )
    request = AuditRequest(
        reference=model,
        config=AuditConfig(**fields),
        force=force,
        device=device or defaults.get("device"),
        batch_size=batch,
        fast=fast,
    )
    if queue:
        _queue_audit(request, as_json)
        return
    signal.signal(signal.SIGTERM, _interrupt)
    with progress_bars(not as_json) as report:
        outcome = run_audit(db, registry, request, report)
    if as_json:
        emit_json({**audit_json(outcome.detail), "reused": outcome.reused})
        return
    if outcome.reused:
        note(
            f"reusing audit {outcome.detail.id} (same version and configuration; "
            "--force runs it again)"
        )
    render_audit(outcome.detail)


def _queue_audit(request, as_json: bool) -> None:
    from monitor.audit import queue
    from monitor.audit.runner import make_plan

    plan = make_plan(state.registry(), request.reference, request.config)
    audit_id = queue.enqueue(state.database(), plan, "cli")
    if as_json:
        emit_json({"queued": audit_id is not None, "audit_id": audit_id, "model": str(plan.ref)})
        return
    if audit_id is None:
        note(f"an audit of {plan.ref} with this configuration is already queued or running")
        return
    say(f"queued audit {audit_id} of {plan.ref}; a `robmon worker` will run it")


@audits_app.command("list")
def list_audits(
    model: str | None = typer.Option(None, help="Only this registered model."),
    version: str | None = typer.Option(None, help="Only this version (with --model)."),
    status: str | None = typer.Option(None, help=", ".join(AUDIT_STATUSES) + "."),
    limit: int = typer.Option(50, help="At most this many, newest first."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Past audits, newest first."""
    from monitor.audit import store

    check_choice("--status", status, AUDIT_STATUSES)
    audits = store.list_audits(
        state.database(), model=model, version=version, status=status, limit=limit
    )
    if as_json:
        emit_json(audits)
        return
    if not audits:
        say("no audits yet (run `robmon audit MODEL`)")
        return
    print_table(
        "audits",
        (
            "id",
            "model",
            "version",
            "dataset",
            "status",
            "trigger",
            "created (UTC)",
            "clean",
            "score",
            "warnings",
        ),
        [
            (
                a.id,
                a.model_name,
                a.model_version,
                a.dataset,
                a.status,
                a.trigger,
                a.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                fmt(a.clean_accuracy),
                fmt(a.score, 1),
                a.warnings or "",
            )
            for a in audits
        ],
    )


@audits_app.command("show")
def show_audit(
    audit_id: int = typer.Argument(..., help="Audit id (see `robmon audits list`)."),
    save_artifacts: Path | None = typer.Option(
        None, "--save-artifacts", help="Write the audit's plots into this folder."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """One audit: results per attack and eps, per-class accuracy, credibility checks."""
    from monitor.audit import store
    from monitor.audit.report import audit_json

    db = state.database()
    detail = store.get_audit(db, audit_id)
    if save_artifacts is not None:
        save_artifacts.mkdir(parents=True, exist_ok=True)
        for name in detail.artifact_names:
            (save_artifacts / name).write_bytes(store.get_artifact(db, audit_id, name)[1])
    if as_json:
        emit_json(audit_json(detail))
    else:
        render_audit(detail)


def render_audit(detail) -> None:
    """Tables for one audit: header, results, per-class, checks."""
    say(
        f"audit {detail.id}: {detail.model_name} v{detail.model_version} on {detail.dataset} "
        f"({detail.status}, {detail.trigger})"
    )
    _render_run_info(detail.run_info)
    if detail.status != "succeeded":
        say(f"error: {detail.error}" if detail.error else "no results yet")
        return
    surrogate = f", transfer from {detail.surrogate}" if detail.surrogate else ""
    say(
        f"clean accuracy {fmt(detail.clean_accuracy)} on {detail.n_samples} samples; "
        f"robustness score {fmt(detail.score, 1)}{surrogate}"
    )
    if detail.run_info and detail.run_info.get("contract", {}).get("warning"):
        say(f"Check: {detail.run_info['contract']['warning']}")
    print_table(
        None,
        (
            "threat",
            "attack",
            "norm",
            "eps",
            "robust acc",
            "success rate",
            "mean pert.",
            "max pert.",
            "seconds",
        ),
        [
            (
                r.threat,
                r.attack,
                r.norm,
                eps_text(r.eps),
                fmt(r.robust_accuracy),
                fmt(r.attack_success_rate),
                fmt(r.mean_perturbation, 4),
                fmt(r.max_perturbation, 4),
                fmt(r.seconds, 2),
            )
            for r in detail.results
        ],
    )
    _render_per_class(detail)
    print_table(
        None,
        ("check", "status", "detail"),
        [
            (c.name, c.status.upper() if c.status == "warning" else c.status, c.detail)
            for c in detail.checks
        ],
    )
    if detail.mlflow_run_id:
        say(f"MLflow run {detail.mlflow_run_id} (experiment robustness-audits)")
    elif detail.writeback_error:
        say(f"MLflow write-back failed: {detail.writeback_error}")


def _render_run_info(info: dict | None) -> None:
    from monitor.audit.report import run_info_lines

    for line in run_info_lines(info):
        say(line)


def _render_per_class(detail) -> None:
    clean = {c.label: c.accuracy for c in detail.per_class if c.threat == "clean"}
    strongest = min(detail.results, key=lambda r: (r.robust_accuracy, -r.eps), default=None)
    if not clean or strongest is None:
        return
    middle = sorted({r.eps for r in detail.results if r.norm == strongest.norm})
    eps = middle[len(middle) // 2]
    attacked = {}
    for row in detail.per_class:
        if row.threat == strongest.threat and row.norm == strongest.norm and row.eps == eps:
            attacked[row.label] = min(attacked.get(row.label, 1.0), row.accuracy)
    print_table(
        f"per-class accuracy (clean / worst attack at {strongest.norm} eps {eps_text(eps)})",
        ("class", *[str(k) for k in sorted(clean)]),
        [
            ("clean", *[fmt(clean[k], 2) for k in sorted(clean)]),
            ("attacked", *[fmt(attacked.get(k), 2) for k in sorted(clean)]),
        ],
    )
