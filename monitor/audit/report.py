"""What an audit shows: its JSON report and two PNGs (robust accuracy against eps; a gallery of
clean, adversarial and amplified-perturbation examples)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any, Protocol

from monitor.audit.config import cell_key, eps_text, stored_preset
from monitor.audit.measure import Example
from monitor.audit.store import AuditDetail


def audit_json(detail: AuditDetail) -> dict[str, Any]:
    """The documented JSON form of an audit (README, "Audit JSON")."""
    return {
        "audit_id": detail.id,
        "model": {"name": detail.model_name, "version": detail.model_version},
        "dataset": detail.dataset,
        "status": detail.status,
        "trigger": detail.trigger,
        "clean_accuracy": detail.clean_accuracy,
        "n": detail.n_samples,
        "score": detail.score,
        "preset": stored_preset(detail.config),
        "results": [
            {
                "attack": r.attack,
                "norm": r.norm,
                "eps": r.eps,
                "threat": r.threat,
                "steps": r.steps,
                "restarts": r.restarts,
                "robust_accuracy": r.robust_accuracy,
                "attack_success_rate": r.attack_success_rate,
                "n": r.n,
                "mean_perturbation": r.mean_perturbation,
                "max_perturbation": r.max_perturbation,
                "seconds": r.seconds,
                "queries": (detail.run_info or {}).get("queries", {}).get(cell_key(r)),
            }
            for r in detail.results
        ],
        "per_class": [
            {
                "attack": c.attack,
                "norm": c.norm,
                "eps": c.eps,
                "threat": c.threat,
                "label": c.label,
                "n": c.n,
                "accuracy": c.accuracy,
            }
            for c in detail.per_class
        ],
        "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in detail.checks],
        "config": detail.config,
        "config_hash": detail.config_hash,
        "run_info": detail.run_info,
        "surrogate": detail.surrogate,
        "device": detail.device,
        "created_at": detail.created_at,
        "started_at": detail.started_at,
        "finished_at": detail.finished_at,
        "error": detail.error,
        "mlflow_run_id": detail.mlflow_run_id,
        "writeback_error": detail.writeback_error,
    }


def run_info_lines(info: dict[str, Any] | None) -> list[str]:
    """How the audit ran, one line each: "Input: ...", "Eps grid: ... (why)", "Batch size: ..."
    (audits from before run_info have none)."""
    if not info:
        return []
    lines = []
    if "preset" in info:
        chained = (
            "; chained: each attack runs on what the earlier ones left, a result is the worst "
            "case so far"
            if info["preset"].get("chain")
            else ""
        )
        lines.append(f"Attacks: {info['preset']['text']}{chained}")
    for cell, q in (info.get("queries") or {}).items():
        lines.append(
            f"Queries ({cell}): mean {q['mean']:.0f}, median {q['median']:.0f}, "
            f"max {q['max']} of {q['budget']} per attacked sample"
        )
    if "contract" in info:
        lines.append(f"Input: {info['contract']['text']}")
    if "eps" in info:
        grid = "; ".join(
            f"{norm} {', '.join(eps_text(e) for e in values)}"
            for norm, values in info["eps"]["grid"].items()
        )
        lines.append(f"Eps grid: {grid} ({info['eps']['why']})")
    if info.get("batch"):
        batch = info["batch"]
        halved = f", halved {batch['halvings']}× on out-of-memory" if batch.get("halvings") else ""
        lines.append(
            f"Batch size: {batch['used']} on {batch.get('device', '?')} ({batch['why']}{halved})"
        )
    return lines


def _figure_png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buffer.getvalue()


class _Point(Protocol):
    threat: str
    attack: str
    norm: str
    eps: float
    robust_accuracy: float


def robust_accuracy_plot(
    cells: Sequence[_Point], clean_accuracy: float | None, title: str
) -> bytes:
    """Robust accuracy against eps, one line per (threat, attack) and one panel per norm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norms = sorted({c.norm for c in cells}) or ["linf"]
    fig, axes = plt.subplots(1, len(norms), figsize=(5.2 * len(norms), 3.8), squeeze=False)
    for ax, norm in zip(axes[0], norms, strict=True):
        lines: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for c in cells:
            if c.norm == norm:
                lines.setdefault((c.threat, c.attack), []).append((c.eps, c.robust_accuracy))
        for (threat, attack), points in sorted(lines.items()):
            points.sort()
            xs = [0.0] + [p[0] for p in points]
            ys = [clean_accuracy or 0.0] + [p[1] for p in points]
            style = "-o" if threat == "white-box" else "--s"
            ax.plot(xs, ys, style, label=f"{attack.upper()} ({threat})")
        if clean_accuracy is not None:
            ax.axhline(clean_accuracy, color="grey", ls=":", lw=1, label="clean")
        ax.set_xlabel(f"eps ({'L∞' if norm == 'linf' else 'L2'}, pixel scale)")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _figure_png(fig)


def example_gallery(examples: Sequence[Example], title: str) -> bytes:
    """Rows: clean, adversarial, perturbation amplified to the full range (grey = unchanged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(len(examples), 1)
    fig, axes = plt.subplots(3, count, figsize=(1.3 * count + 0.8, 4.2), squeeze=False)
    for j, example in enumerate(examples):
        clean, adv = example.clean, example.adversarial
        delta = adv - clean
        scale = float(delta.abs().max()) or 1.0
        images = (clean, adv, 0.5 + 0.5 * delta / scale)
        for i, image in enumerate(images):
            array = image.clamp(0, 1).permute(1, 2, 0).numpy()
            cmap = "gray" if array.shape[2] == 1 else None
            axes[i][j].imshow(
                array.squeeze(2) if cmap else array,
                cmap=cmap,
                vmin=0,
                vmax=1,
                interpolation="nearest",
            )
        axes[0][j].set_title(f"label {example.label}", fontsize=8)
        axes[1][j].set_title(f"→ {example.adversarial_label}", fontsize=8, color="firebrick")
    for i, label in enumerate(("clean", "adversarial", "perturbation\n(amplified)")):
        axes[i][0].set_ylabel(label, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    return _figure_png(fig)
