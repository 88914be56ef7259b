"""`robmon harden` (adversarial training) and `robmon defend` (input transformations): new
versions beside their parent, audited at once; `robmon audits compare` shows the trade-off."""

from __future__ import annotations

import typer

from monitor.cli.audits import audits_app
from monitor.cli.base import (
    JSON_OPTION,
    app,
    emit_json,
    fmt,
    note,
    print_table,
    progress_bars,
    say,
    state,
)


@app.command("harden")
def harden(
    model: str = typer.Argument(..., help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS."),
    method: str = typer.Option(..., help="fgsm-rs (Wong et al. 2020) or pgd (Madry et al. 2018)."),
    eps: float = typer.Option(..., help="L∞ radius of the training attacks, in [0, 1] pixels."),
    steps: int = typer.Option(7, help="PGD steps per batch (pgd only)."),
    epochs: int = typer.Option(10, help="Passes over the training data."),
    dataset: str | None = typer.Option(
        None, help="Training data (default: the version's robustness.dataset, train split)."
    ),
    clean_ratio: float = typer.Option(0.5, help="Share of each batch left clean."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (fine-tuning from the parent)."),
    seed: int = typer.Option(0, help="Random seed."),
    preset: str = typer.Option(
        "standard",
        help="Audit preset for parent and child (default standard: gate-grade, so the gain "
        "reported is not inflated by a weak attack; quick for a fast look).",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Adversarially train a registered torch model; register the result and audit it."""
    from monitor.harden.lineage import harden as run_harden
    from monitor.harden.training import Recipe

    try:
        recipe = Recipe(method, eps, epochs, steps, clean_ratio, lr=lr, seed=seed)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None

    def epoch_line(stats) -> None:
        if not as_json:
            note(
                f"epoch {stats.epoch}/{epochs}: loss {stats.loss:.3f}, clean acc "
                f"{stats.clean_accuracy:.3f}, adversarial acc {stats.adversarial_accuracy:.3f} "
                f"({stats.seconds:.1f} s)"
            )

    with progress_bars(not as_json) as report:

        def on_epoch(stats) -> None:
            report("adversarial training", stats.epoch, epochs)
            epoch_line(stats)

        derived = run_harden(
            state.database(),
            state.registry(),
            model,
            recipe,
            dataset=dataset,
            preset=preset,
            on_epoch=on_epoch,
            report=report,
        )
    _render(derived, as_json)


@app.command("defend")
def defend(
    model: str = typer.Argument(..., help="NAME, models:/NAME/VERSION or models:/NAME@ALIAS."),
    transform: list[str] = typer.Option(
        ...,
        "--transform",
        help="jpeg:QUALITY, blur:SIGMA, bits:N or random-resize:PIXELS (repeatable, in order).",
    ),
    preset: str = typer.Option(
        "standard",
        help="Audit preset for parent and child (default standard: gate-grade, so the gain "
        "reported is not inflated by a weak attack; quick for a fast look).",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Register a version that transforms inputs before the model; audit it with BPDA/EOT."""
    from monitor.harden.lineage import defend as run_defend

    with progress_bars(not as_json) as report:
        derived = run_defend(
            state.database(), state.registry(), model, transform, preset=preset, report=report
        )
    _render(derived, as_json)


@audits_app.command("compare")
def compare(
    first: str = typer.Argument(..., help="The baseline, e.g. models:/digits-cnn/1."),
    second: str = typer.Argument(..., help="The version compared with it."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Two versions side by side: clean accuracy lost, robust accuracy gained, training time."""
    from monitor.audit.compare import compare as run_compare

    render_comparison(run_compare(state.database(), state.registry(), first, second), as_json)


def _render(derived, as_json: bool) -> None:
    from monitor.audit.compare import compare as run_compare

    comparison = run_compare(
        state.database(), state.registry(), derived.parent.uri, derived.child.uri
    )
    if as_json:
        data = comparison_json(comparison)
        data["registered"] = str(derived.child)
        data["note"] = derived.note
        if derived.training is not None:
            data["training"] = [vars(e) for e in derived.training.epochs]
        emit_json(data)
        return
    if derived.note:
        note(f"note: {derived.note}")
    say(f"registered {derived.child} ({comparison.b.lineage})")
    render_comparison(comparison, False)


def comparison_json(c) -> dict:
    side = lambda s: {  # noqa: E731
        "model": str(s.ref),
        "audit_id": s.audit.id,
        "clean_accuracy": s.audit.clean_accuracy,
        "score": s.audit.score,
        "training_seconds": s.training_seconds,
        "lineage": s.lineage or None,
    }
    return {
        "a": side(c.a),
        "b": side(c.b),
        "same_config": c.same_config,
        "clean_accuracy_delta": c.clean_delta,
        "cells": [
            {
                "threat": d.threat,
                "attack": d.attack,
                "norm": d.norm,
                "eps": d.eps,
                "a": d.a,
                "b": d.b,
                "delta": d.delta,
            }
            for d in c.cells
        ],
    }


def render_comparison(c, as_json: bool) -> None:
    if as_json:
        emit_json(comparison_json(c))
        return
    a, b = c.a, c.b
    if not c.same_config:
        note("note: the two versions have no audit with the same configuration; newest of each")
    for side in (a, b):
        trained = f", trained in {side.training_seconds:.1f} s" if side.training_seconds else ""
        say(
            f"{side.ref}: audit {side.audit.id}, clean {fmt(side.audit.clean_accuracy)}, "
            f"score {fmt(side.audit.score, 1)}{trained}"
            + (f" — {side.lineage}" if side.lineage else "")
        )
    clean_row = (
        "",
        "clean",
        "",
        "",
        fmt(a.audit.clean_accuracy),
        fmt(b.audit.clean_accuracy),
        _signed(c.clean_delta),
    )
    print_table(
        None,
        ("threat", "attack", "norm", "eps", str(a.ref), str(b.ref), "change"),
        [clean_row]
        + [
            (d.threat, d.attack, d.norm, f"{d.eps:g}", fmt(d.a), fmt(d.b), _signed(d.delta))
            for d in c.cells
        ],
    )


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.3f}"
