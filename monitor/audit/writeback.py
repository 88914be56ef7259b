"""Audit results back into MLflow: one run per audit, and tags on the audited model version."""

from __future__ import annotations

from monitor.audit.config import headline_rank, stored_preset
from monitor.audit.report import audit_json
from monitor.audit.store import AuditDetail
from monitor.registry import ModelVersionRef, Registry

EXPERIMENT = "robustness-audits"


def metric_key(threat: str, attack: str, norm: str, eps: float) -> str:
    prefix = "robust_accuracy" if threat == "white-box" else f"{threat}_robust_accuracy"
    return f"{prefix}.{attack}.{norm}.eps_{eps:g}"


def write_back(registry: Registry, detail: AuditDetail, artifacts: dict[str, bytes]) -> str:
    """Log the audit as a run in ``robustness-audits`` and tag the version; returns the run id."""
    import json

    metrics = {
        metric_key(r.threat, r.attack, r.norm, r.eps): r.robust_accuracy for r in detail.results
    }
    metrics["clean_accuracy"] = detail.clean_accuracy or 0.0
    if detail.score is not None:
        metrics["robustness_score"] = detail.score
    metrics["credibility_warnings"] = float(detail.warnings)
    config = detail.config
    params = {
        "model": detail.model_name,
        "version": detail.model_version,
        "dataset": detail.dataset,
        "attacks": ",".join(config["attacks"]),
        "norms": ",".join(config["norms"]),
        "eps": json.dumps(config["eps"]),
        "steps": config["steps"],
        "restarts": config["restarts"],
        "limit": config["limit"],
        "seed": config["seed"],
        "surrogate": detail.surrogate,
        "config_hash": detail.config_hash,
        "device": detail.device,
        "audit_id": detail.id,
        **contract_params(detail.run_info),
    }
    files = {"report.json": json.dumps(audit_json(detail), indent=2, default=str).encode()}
    files.update(artifacts)
    run_id = registry.log_run(
        EXPERIMENT,
        f"audit-{detail.id} {detail.model_name} v{detail.model_version}",
        params=params,
        metrics=metrics,
        artifacts=files,
        tags={
            "robustness.audit_id": str(detail.id),
            "robustness.model": detail.model_name,
            "robustness.version": detail.model_version,
            "robustness.trigger": detail.trigger,
        },
    )
    ref = ModelVersionRef(detail.model_name, detail.model_version)
    registry.set_tags(
        ref,
        {
            **headline_tags(registry.version_tags(ref), detail),
            f"robustness.score.{stored_preset(config)}": _score_text(detail.score),
            "robustness.audit_id": detail.id,
            "robustness.audited_at": (detail.finished_at or detail.created_at).isoformat(),
            "robustness.status": detail.status,
            "robustness.credibility": "warning" if detail.warnings else "passed",
        },
    )
    return run_id


def headline_tags(tags: dict[str, str], detail: AuditDetail) -> dict[str, str]:
    """The version's headline score (``robustness.score`` and what produced it): replaced
    only by an audit of at least the same rank, so a quick or one-eps audit run later never
    stands in for the gate-grade score."""
    rank = headline_rank(detail.config)
    old = tags.get("robustness.score_rank")
    if old and tuple(int(v) for v in old.split(".")) > rank:
        return {}
    preset = stored_preset(detail.config)
    scope = "whole dataset" if detail.config.get("limit") is None else f"{detail.n_samples} samples"
    return {
        "robustness.score": _score_text(detail.score),
        "robustness.score_rank": ".".join(str(v) for v in rank),
        "robustness.score_source": f"{preset} preset, audit {detail.id}, {scope}",
    }


def _score_text(score: float | None) -> str:
    return f"{score:.4f}" if score is not None else ""


def contract_params(run_info: dict | None) -> dict[str, str]:
    """The input contract (and why the eps grid) as run params: ``input.scale`` and so on."""
    if not run_info:
        return {}
    contract = run_info.get("contract") or {}
    params = {
        f"input.{key}": "" if value is None else str(value)
        for key, value in contract.items()
        if key not in ("text", "warning")
    }
    if "eps" in run_info:
        params["eps_why"] = run_info["eps"].get("why", "")
    return params


def tag_failure(registry: Registry, detail: AuditDetail) -> None:
    """A failed audit marks the version without touching the last good score."""
    registry.set_tags(
        ModelVersionRef(detail.model_name, detail.model_version),
        {"robustness.status": detail.status, "robustness.failed_audit_id": detail.id},
    )
