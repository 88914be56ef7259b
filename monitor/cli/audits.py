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
    limit_option,
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
    model: str | None = typer.Argument(
        None, help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS (or --endpoint URL)."
    ),
    dataset: str | None = typer.Option(
        None,
        help="digits, digits28, a .npz file or an image folder "
        "(default: the version's robustness.dataset tag, then robmon.toml [audit].dataset).",
    ),
    preset: str | None = typer.Option(
        None,
        help="quick (FGSM + PGD-10: fast feedback, the default), standard (gate-grade: "
        "APGD-CE, APGD-T, Square, chained as AutoAttack) or thorough (standard with restarts "
        "and more queries); robmon.toml [audit] preset sets the default.",
    ),
    attack: list[str] = typer.Option(
        None,
        "--attack",
        help="fgsm, pgd, apgd, apgd-t, fab-t and/or square (repeatable; replaces the preset's).",
    ),
    eps: str | None = typer.Option(
        None,
        help="Comma-separated radii, e.g. 0.1,0.2,0.3 or 8/255 (default by input kind: L∞ "
        "0.1,0.2,0.3 on grayscale, 2/255,4/255,8/255 on colour).",
    ),
    norm: list[str] = typer.Option(None, "--norm", help="linf and/or l2 (repeatable)."),
    steps: int | None = typer.Option(None, help="PGD steps (default 10)."),
    restarts: int | None = typer.Option(None, help="PGD and APGD-CE restarts (default 1)."),
    apgd_steps: int | None = typer.Option(
        None, "--apgd-steps", help="APGD-CE and APGD-T steps (default 100, the paper's)."
    ),
    target_classes: int | None = typer.Option(
        None, "--target-classes", help="APGD-T target classes (default 9, the top ones)."
    ),
    queries: int | None = typer.Option(
        None, help="Square: query budget per sample (default 5000)."
    ),
    query_probe: int | None = typer.Option(
        None,
        "--query-probe",
        help="Square: spend the budget in stages from this many queries (doubling), the next only "
        "while one fooled any sample the earlier attacks left (standard: 500; 0: one search).",
    ),
    target_stop: int | None = typer.Option(
        None,
        "--target-stop",
        help="APGD-T: targets run at the full --apgd-steps, the top ones first (standard: 1; "
        "0: every target at full strength).",
    ),
    target_screen: int | None = typer.Option(
        None,
        "--target-screen",
        help="APGD-T: steps for the targets after the first --target-stop ones, all of them run "
        "(standard: 25; 0: the old rule, go on only while the target before fooled any).",
    ),
    chain: bool | None = typer.Option(
        None,
        "--chain/--no-chain",
        help="Run each attack only on the samples still robust after the earlier ones, "
        "keeping the worst case (the standard and thorough presets do).",
    ),
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
    endpoint: str | None = typer.Option(
        None,
        help="Audit a served model by queries instead of a registry version: the URL of MLflow's "
        "scoring server (mlflow models serve), e.g. http://127.0.0.1:5001/invocations; needs "
        "--dataset.",
    ),
    layout: str = typer.Option(
        "nchw", help="With --endpoint: how images are sent (nchw, nhwc or flat feature rows)."
    ),
    query_batch: int = typer.Option(
        256, "--query-batch", help="With --endpoint: images per HTTP request."
    ),
    rate_limit: float | None = typer.Option(
        None, "--rate-limit", help="With --endpoint: at most this many requests per second."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Attack a model version now and report its robustness (reuses a matching audit)."""
    from monitor.audit.config import audit_defaults, config_from, parse_eps
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
        "preset": preset,
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
        "apgd_steps": apgd_steps,
        "target_classes": target_classes,
        "queries": queries,
        "query_probe": query_probe,
        "target_stop": target_stop,
        "target_screen": target_screen,
        "chain": chain,
    }
    if endpoint is not None or model is None:
        _endpoint_audit(endpoint, model, defaults, chosen, layout, query_batch, rate_limit,
                        force, as_json)  # fmt: skip
        return
    if not defaults.get("dataset") and not dataset:
        ref = registry.resolve(model)
        chosen["dataset"] = registry.version_tags(ref).get("robustness.dataset")
        if not chosen["dataset"]:
            raise AuditError(
                f"{ref} has no robustness.dataset tag and no dataset is configured; pass --dataset."
            )
    request = AuditRequest(
        reference=model,
        config=config_from(defaults, chosen),
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


def _endpoint_audit(
    url, model, defaults, chosen, layout, query_batch, rate_limit, force, as_json
) -> None:
    from monitor.audit.config import config_from
    from monitor.audit.report import audit_json
    from monitor.audit.served import EndpointRequest, run_endpoint_audit
    from monitor.errors import AuditError

    if url is None:
        raise AuditError("name a model (NAME or models:/NAME/VERSION) or pass --endpoint URL.")
    if model is not None:
        raise AuditError("give a registered model or --endpoint URL, not both.")
    check_choice("--layout", layout, ("nchw", "nhwc", "flat"))
    if not (chosen.get("dataset") or defaults.get("dataset")):
        raise AuditError("--endpoint needs --dataset (an endpoint has no robustness.dataset tag).")
    request = EndpointRequest(
        url,
        config_from({"preset": "standard"}, defaults, chosen),
        layout=layout,
        batch_size=query_batch,
        rate_limit=rate_limit,
        force=force,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    with progress_bars(not as_json) as report:
        outcome = run_endpoint_audit(state.database(), state.registry(), request, report)
    if as_json:
        emit_json({**audit_json(outcome.detail), "reused": outcome.reused})
        return
    if outcome.reused:
        note(
            f"reusing audit {outcome.detail.id} (same endpoint and configuration; "
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
    limit: int = limit_option(50, "At most this many, newest first."),
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
