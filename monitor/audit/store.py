"""Audits in the database: claim, finish, fail, reuse, list, read. Rows leave as plain objects.

The claim is database-level: ``audits.active_key`` (model/version/config hash) is unique while
an audit is queued or running, so two processes cannot run the same audit at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from monitor.audit.checks import Check
from monitor.audit.measure import Measurements
from monitor.db.models import Audit, AuditArtifact, AuditCheck, AuditClassResult, AuditResult
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import AuditError, NotFound

ACTIVE = ("queued", "running")
ENDED = ("succeeded", "failed", "interrupted")


class AuditAlreadyActive(AuditError):
    """Raised when the same audit is already queued or running (another process holds it)."""

    def __init__(self, audit_id: int, status: str, key: str) -> None:
        super().__init__(f"audit {audit_id} of {key} with this configuration is already {status}.")
        self.audit_id = audit_id


@dataclass
class ResultRow:
    attack: str
    norm: str
    eps: float
    threat: str
    steps: int
    restarts: int
    robust_accuracy: float
    attack_success_rate: float | None
    n: int
    mean_perturbation: float | None
    max_perturbation: float | None
    seconds: float
    passes: int | None


@dataclass
class ClassRow:
    attack: str
    norm: str
    eps: float
    threat: str
    label: int
    n: int
    accuracy: float


@dataclass
class AuditSummary:
    id: int
    model_name: str
    model_version: str
    model_kind: str | None
    dataset: str
    status: str
    trigger: str
    config_hash: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    clean_accuracy: float | None
    score: float | None
    error: str | None
    warnings: int = 0


@dataclass
class AuditDetail(AuditSummary):
    config: dict[str, Any] = field(default_factory=dict)
    n_samples: int | None = None
    device: str | None = None
    surrogate: str | None = None
    mlflow_run_id: str | None = None
    writeback_error: str | None = None
    results: list[ResultRow] = field(default_factory=list)
    per_class: list[ClassRow] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    artifact_names: list[str] = field(default_factory=list)
    # how it ran: {"contract": {...}, "eps": {"grid", "why"}, "batch": ...} (None before it ran)
    run_info: dict[str, Any] | None = None

    def robust_by_cell(self) -> dict[tuple[str, str, str, float], float]:
        """(threat, attack, norm, eps) -> robust accuracy."""
        return {(r.threat, r.attack, r.norm, r.eps): r.robust_accuracy for r in self.results}


def active_key(name: str, version: str, config_hash: str) -> str:
    return f"{name}/{version}/{config_hash}"


def find_reusable(db: Database, name: str, version: str, config_hash: str) -> int | None:
    """The newest succeeded audit of this version with this configuration."""
    with db.session() as s:
        return s.scalar(
            select(Audit.id)
            .where(
                Audit.model_name == name,
                Audit.model_version == version,
                Audit.config_hash == config_hash,
                Audit.status == "succeeded",
            )
            .order_by(Audit.id.desc())
            .limit(1)
        )


def create(
    db: Database,
    *,
    name: str,
    version: str,
    dataset: str,
    config: dict[str, Any],
    config_hash: str,
    trigger: str,
    status: str = "running",
    requested_by: str | None = None,
    worker: str | None = None,
) -> int:
    """Insert a queued or running audit, holding its active key; raise if it is held already."""
    key = active_key(name, version, config_hash)
    now = utcnow()
    try:
        with db.session() as s:
            audit = Audit(
                model_name=name,
                model_version=version,
                dataset=dataset,
                config=config,
                config_hash=config_hash,
                status=status,
                trigger=trigger,
                requested_by=requested_by,
                created_at=now,
                active_key=key,
                worker=worker,
                started_at=now if status == "running" else None,
                attempts=1 if status == "running" else 0,
            )
            s.add(audit)
            s.flush()
            return audit.id
    except IntegrityError:
        with db.session() as s:
            holder = s.execute(
                select(Audit.id, Audit.status).where(Audit.active_key == key)
            ).first()
        if holder is None:  # it ended between our insert and this read: try once more
            return create(
                db,
                name=name,
                version=version,
                dataset=dataset,
                config=config,
                config_hash=config_hash,
                trigger=trigger,
                status=status,
                requested_by=requested_by,
                worker=worker,
            )
        raise AuditAlreadyActive(holder.id, holder.status, key) from None


def mark_running(
    db: Database,
    audit_id: int,
    *,
    kind: str,
    device: str,
    surrogate: str | None,
    run_info: dict[str, Any] | None = None,
) -> None:
    """The audit has its models loaded: what kind, where, and how it runs (``run_info``)."""
    with db.session() as s:
        audit = s.get_one(Audit, audit_id)
        audit.model_kind, audit.device, audit.surrogate = kind, device, surrogate
        if run_info is not None:
            audit.run_info = run_info
        audit.status = "running"
        audit.started_at = audit.started_at or utcnow()


def mark_ended(db: Database, audit_id: int, status: str, error: str | None = None) -> None:
    """End an audit as failed or interrupted (succeeded goes through ``save_success``)."""
    with db.session() as s:
        audit = s.get_one(Audit, audit_id)
        audit.status, audit.error = status, error
        audit.finished_at = utcnow()
        audit.active_key = None


def save_success(
    db: Database,
    audit_id: int,
    m: Measurements,
    checks: list[Check],
    score: float | None,
    artifacts: dict[str, tuple[str, bytes]],
    run_info: dict[str, Any] | None = None,
) -> None:
    """Store every result, per-class row, check and artifact (and how it ran), and mark the
    audit succeeded."""
    with db.session() as s:
        audit = s.get_one(Audit, audit_id)
        if run_info is not None:
            audit.run_info = run_info
        audit.clean_accuracy, audit.score, audit.n_samples = m.clean_accuracy, score, m.n
        for label, (n, acc) in m.per_class_clean.items():
            audit.class_results.append(
                AuditClassResult(
                    attack="clean",
                    norm="none",
                    eps=0.0,
                    threat="clean",
                    label=label,
                    n=n,
                    accuracy=acc,
                )
            )
        for c in m.cells:
            audit.results.append(
                AuditResult(
                    attack=c.attack,
                    norm=c.norm,
                    eps=c.eps,
                    threat=c.threat,
                    steps=c.steps,
                    restarts=c.restarts,
                    robust_accuracy=c.robust_accuracy,
                    attack_success_rate=c.attack_success_rate,
                    n=c.n,
                    mean_perturbation=c.mean_perturbation,
                    max_perturbation=c.max_perturbation,
                    seconds=c.seconds,
                    passes=c.passes,
                )
            )
            for label, (n, acc) in c.per_class.items():
                audit.class_results.append(
                    AuditClassResult(
                        attack=c.attack,
                        norm=c.norm,
                        eps=c.eps,
                        threat=c.threat,
                        label=label,
                        n=n,
                        accuracy=acc,
                    )
                )
        for check in checks:
            audit.checks.append(
                AuditCheck(name=check.name, status=check.status, detail=check.detail)
            )
        for name, (content_type, data) in artifacts.items():
            audit.artifacts.append(AuditArtifact(name=name, content_type=content_type, data=data))
        audit.status, audit.finished_at, audit.active_key = "succeeded", utcnow(), None


def set_writeback(db: Database, audit_id: int, run_id: str | None, error: str | None) -> None:
    with db.session() as s:
        audit = s.get_one(Audit, audit_id)
        audit.mlflow_run_id, audit.writeback_error = run_id, error


def _summary(audit: Audit, warnings: int) -> dict[str, Any]:
    return dict(
        id=audit.id,
        model_name=audit.model_name,
        model_version=audit.model_version,
        model_kind=audit.model_kind,
        dataset=audit.dataset,
        status=audit.status,
        trigger=audit.trigger,
        config_hash=audit.config_hash,
        created_at=audit.created_at,
        started_at=audit.started_at,
        finished_at=audit.finished_at,
        clean_accuracy=audit.clean_accuracy,
        score=audit.score,
        error=audit.error,
        warnings=warnings,
    )


def list_audits(
    db: Database,
    *,
    model: str | None = None,
    version: str | None = None,
    status: str | None = None,
    limit: int = 50,
) -> list[AuditSummary]:
    """Newest first, with the number of credibility warnings of each."""
    warnings = (
        select(AuditCheck.audit_id, func.count().label("n"))
        .where(AuditCheck.status == "warning")
        .group_by(AuditCheck.audit_id)
        .subquery()
    )
    query = select(Audit, func.coalesce(warnings.c.n, 0)).outerjoin(
        warnings, warnings.c.audit_id == Audit.id
    )
    if model:
        query = query.where(Audit.model_name == model)
    if version:
        query = query.where(Audit.model_version == version)
    if status:
        query = query.where(Audit.status == status)
    with db.session() as s:
        rows = s.execute(query.order_by(Audit.id.desc()).limit(limit)).all()
        return [AuditSummary(**_summary(audit, n)) for audit, n in rows]


def get_audit(db: Database, audit_id: int) -> AuditDetail:
    """One audit with its results, per-class rows and checks; NotFound if there is none."""
    with db.session() as s:
        audit = s.get(Audit, audit_id)
        if audit is None:
            raise NotFound(f"there is no audit {audit_id} (see `robmon audits list`).")
        checks = [Check(c.name, c.status, c.detail) for c in audit.checks]
        return AuditDetail(
            **_summary(audit, sum(c.status == "warning" for c in checks)),
            config=audit.config,
            n_samples=audit.n_samples,
            device=audit.device,
            surrogate=audit.surrogate,
            mlflow_run_id=audit.mlflow_run_id,
            writeback_error=audit.writeback_error,
            results=[
                ResultRow(
                    r.attack,
                    r.norm,
                    r.eps,
                    r.threat,
                    r.steps,
                    r.restarts,
                    r.robust_accuracy,
                    r.attack_success_rate,
                    r.n,
                    r.mean_perturbation,
                    r.max_perturbation,
                    r.seconds,
                    r.passes,
                )
                for r in audit.results
            ],
            per_class=[
                ClassRow(c.attack, c.norm, c.eps, c.threat, c.label, c.n, c.accuracy)
                for c in audit.class_results
            ],
            checks=checks,
            artifact_names=[a.name for a in audit.artifacts],
            run_info=audit.run_info,
        )


def get_artifact(db: Database, audit_id: int, name: str) -> tuple[str, bytes]:
    """(content type, bytes) of one stored artifact."""
    with db.session() as s:
        row = s.scalar(
            select(AuditArtifact).where(
                AuditArtifact.audit_id == audit_id, AuditArtifact.name == name
            )
        )
        if row is None:
            raise NotFound(f"audit {audit_id} has no artifact {name!r}.")
        return row.content_type, row.data
