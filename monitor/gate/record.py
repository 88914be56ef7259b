"""Gate decisions in the database and in MLflow: the record, the version's tags, promotion of
an alias on a pass (never on fail or error), rollback, history, and the Markdown summary."""

from __future__ import annotations

import getpass
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from monitor.db.models import GateDecision
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import NotFound, RobmonError
from monitor.gate.decision import Decision, as_dict
from monitor.gate.policy import Policy
from monitor.registry import Registry


def who() -> str:
    """Who or what runs the gate: ROBMON_USER, a CI's actor and run, or user@host."""
    if os.environ.get("ROBMON_USER"):
        return os.environ["ROBMON_USER"]
    if os.environ.get("GITHUB_ACTOR"):
        run = os.environ.get("GITHUB_RUN_ID", "")
        return f"{os.environ['GITHUB_ACTOR']} (GitHub Actions run {run})".strip()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def record(
    db: Database, registry: Registry, decision: Decision, policy: Policy, promote: str | None = None
) -> Decision:
    """Store the decision, tag the version, and move ``promote`` to it if it passed."""
    decision.decided_by = decision.decided_by or who()
    if decision.verdict == "passed" and promote:
        decision.previous_version = registry.aliases(decision.model.name).get(promote)
        registry.set_alias(decision.model.name, promote, decision.model.version)
        decision.promoted_alias = promote
    with db.session() as s:
        row = GateDecision(
            kind="decision",
            model_name=decision.model.name,
            model_version=decision.model.version,
            verdict=decision.verdict,
            reason=decision.reason,
            policy_hash=decision.policy_hash,
            policy_text=policy.text,
            audit_id=decision.audit_id,
            baseline=str(decision.baseline) if decision.baseline else None,
            baseline_audit_id=decision.baseline_audit_id,
            criteria=[c.__dict__ for c in decision.criteria],
            decided_at=decision.decided_at,
            decided_by=decision.decided_by,
            promoted_alias=decision.promoted_alias,
            previous_version=decision.previous_version,
        )
        s.add(row)
        s.flush()
        decision.decision_id = row.id
    if decision.verdict in ("passed", "failed"):
        registry.set_tags(
            decision.model,
            {"robustness.gate": decision.verdict, "robustness.gate_policy": decision.policy_hash},
        )
    return decision


@dataclass
class Rollback:
    model: str
    alias: str
    restored_version: str | None
    from_version: str
    decision_id: int


def rollback(db: Database, registry: Registry, model: str, alias: str) -> Rollback:
    """Move ``alias`` back to where it pointed before the gate last promoted a version to it."""
    with db.session() as s:
        promotion = s.scalars(
            select(GateDecision)
            .where(
                GateDecision.model_name == model,
                GateDecision.kind == "decision",
                GateDecision.promoted_alias == alias,
                GateDecision.rolled_back_at.is_(None),
            )
            .order_by(GateDecision.id.desc())
            .limit(1)
        ).first()
        if promotion is None:
            raise NotFound(f"no gate promotion of {model}@{alias} to roll back.")
        current = registry.aliases(model).get(alias)
        if current != promotion.model_version:
            raise RobmonError(
                f"{model}@{alias} points to version {current}, not {promotion.model_version} "
                f"as gate decision {promotion.id} left it; move it by hand."
            )
        previous = promotion.previous_version
        if previous is None:
            registry.delete_alias(model, alias)
        else:
            registry.set_alias(model, alias, previous)
        promotion.rolled_back_at = utcnow()
        s.add(
            GateDecision(
                kind="rollback",
                model_name=model,
                model_version=promotion.model_version,
                verdict="rolled-back",
                reason=f"{alias} moved back from {promotion.model_version} to "
                f"{previous or '(no version)'} (undoing decision {promotion.id})",
                criteria=[],
                decided_at=utcnow(),
                decided_by=who(),
                promoted_alias=alias,
                previous_version=previous,
            )
        )
        return Rollback(model, alias, previous, promotion.model_version, promotion.id)


@dataclass
class HistoryRow:
    id: int
    kind: str
    model_version: str
    verdict: str
    reason: str
    policy_hash: str | None
    baseline: str | None
    decided_at: datetime
    decided_by: str
    promoted_alias: str | None
    previous_version: str | None
    rolled_back_at: datetime | None
    criteria: list[dict[str, Any]]


def history(db: Database, model: str, limit: int = 50) -> list[HistoryRow]:
    with db.session() as s:
        rows = s.scalars(
            select(GateDecision)
            .where(GateDecision.model_name == model)
            .order_by(GateDecision.id.desc())
            .limit(limit)
        )
        return [
            HistoryRow(
                r.id,
                r.kind,
                r.model_version,
                r.verdict,
                r.reason,
                r.policy_hash,
                r.baseline,
                r.decided_at,
                r.decided_by,
                r.promoted_alias,
                r.previous_version,
                r.rolled_back_at,
                list(r.criteria),
            )
            for r in rows
        ]


def markdown(decision: Decision) -> str:
    """The decision as Markdown, for a CI job's step summary."""
    icon = {"passed": "✅", "failed": "❌", "undecided": "⚠️"}[decision.verdict]
    lines = [
        f"## {icon} Robustness gate: {decision.model} {decision.verdict}",
        "",
        decision.reason,
        "",
    ]
    if decision.criteria:
        lines += [
            "| criterion | value | threshold | baseline | outcome | why |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in decision.criteria:
            outcome = {True: "pass", False: "**fail**", None: "skipped"}[c.passed]
            lines.append(
                f"| {c.name} | {_cell(c.actual)} | {_cell(c.threshold)} | "
                f"{_cell(c.baseline)} | {outcome} | {c.reason} |"
            )
        lines.append("")
    facts = as_dict(decision)
    lines.append(
        f"Audit {facts['audit_id']} ({facts['preset']} preset), baseline "
        f"{facts['baseline'] or 'none'}, policy "
        f"{decision.policy_hash}, decided by {decision.decided_by}."
    )
    if decision.promoted_alias:
        lines.append(
            f"Promoted `{decision.promoted_alias}` to version {decision.model.version} "
            f"(was {decision.previous_version or 'unset'})."
        )
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
