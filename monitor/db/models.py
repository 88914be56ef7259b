"""The one schema: typed SQLAlchemy 2 models. Alembic migrations are generated from these."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    Unicode,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from monitor.db.types import UTCDateTime, utcnow

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON()}  # noqa: RUF012


class Audit(Base):
    """One robustness audit of one model version under one configuration.

    ``status`` moves queued -> running -> succeeded | failed | interrupted. ``active_key`` is
    set while the audit is queued or running and cleared when it ends: its unique constraint is
    the database-level claim that stops two processes from running the same audit at once.
    """

    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(64))
    model_kind: Mapped[str | None] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(1024))
    config: Mapped[dict[str, Any]]
    config_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    trigger: Mapped[str] = mapped_column(String(32), default="cli")
    requested_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    clean_accuracy: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float | None] = mapped_column(Float)
    n_samples: Mapped[int | None] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(32))
    surrogate: Mapped[str | None] = mapped_column(String(300))
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64))
    writeback_error: Mapped[str | None] = mapped_column(Text)
    active_key: Mapped[str | None] = mapped_column(String(400), unique=True)
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None]
    lease_expires_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # how the audit ran, beside its configuration: the model's input contract, which eps grid
    # and why, the batch size chosen for the memory there was (none of it changes the hash)
    run_info: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    results: Mapped[list[AuditResult]] = relationship(
        back_populates="audit", cascade="all, delete-orphan", order_by="AuditResult.id"
    )
    class_results: Mapped[list[AuditClassResult]] = relationship(
        back_populates="audit", cascade="all, delete-orphan", order_by="AuditClassResult.id"
    )
    checks: Mapped[list[AuditCheck]] = relationship(
        back_populates="audit", cascade="all, delete-orphan", order_by="AuditCheck.id"
    )
    artifacts: Mapped[list[AuditArtifact]] = relationship(
        back_populates="audit", cascade="all, delete-orphan", order_by="AuditArtifact.id"
    )

    __table_args__ = (
        Index("ix_audits_model_version_config", "model_name", "model_version", "config_hash"),
        Index("ix_audits_status_created", "status", "created_at"),
        Index("ix_audits_created_at", "created_at"),
    )


class AuditResult(Base):
    """Robust accuracy of one (attack, norm, eps, threat) cell of an audit."""

    __tablename__ = "audit_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"))
    attack: Mapped[str] = mapped_column(String(32))
    norm: Mapped[str] = mapped_column(String(8))
    eps: Mapped[float] = mapped_column(Float)
    threat: Mapped[str] = mapped_column(String(16), default="white-box")
    steps: Mapped[int] = mapped_column(Integer)
    restarts: Mapped[int] = mapped_column(Integer, default=1)
    robust_accuracy: Mapped[float] = mapped_column(Float)
    attack_success_rate: Mapped[float | None] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)
    mean_perturbation: Mapped[float | None] = mapped_column(Float)
    max_perturbation: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    passes: Mapped[int | None] = mapped_column(Integer)

    audit: Mapped[Audit] = relationship(back_populates="results")

    __table_args__ = (
        UniqueConstraint("audit_id", "attack", "norm", "eps", "threat"),
        Index("ix_audit_results_audit_id", "audit_id"),
    )


class AuditClassResult(Base):
    """Accuracy on one class, clean (attack ``clean``, eps 0) or under one attack cell."""

    __tablename__ = "audit_class_results"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"))
    attack: Mapped[str] = mapped_column(String(32))
    norm: Mapped[str] = mapped_column(String(8))
    eps: Mapped[float] = mapped_column(Float)
    threat: Mapped[str] = mapped_column(String(16), default="white-box")
    label: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)

    audit: Mapped[Audit] = relationship(back_populates="class_results")

    __table_args__ = (Index("ix_audit_class_results_audit_id", "audit_id"),)


class AuditCheck(Base):
    """One credibility check: ``passed``, ``warning`` or ``skipped`` with a one-line reason."""

    __tablename__ = "audit_checks"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text)

    audit: Mapped[Audit] = relationship(back_populates="checks")

    __table_args__ = (
        UniqueConstraint("audit_id", "name"),
        Index("ix_audit_checks_audit_id", "audit_id"),
    )


class AuditArtifact(Base):
    """A small file an audit produced (report, plots, example gallery), kept for the dashboard."""

    __tablename__ = "audit_artifacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    audit_id: Mapped[int] = mapped_column(ForeignKey("audits.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    content_type: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)

    audit: Mapped[Audit] = relationship(back_populates="artifacts")

    __table_args__ = (UniqueConstraint("audit_id", "name"),)


# -- production monitoring -------------------------------------------------------------------

BigId = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only


class DetectorCalibration(Base):
    """Detector thresholds of one model version at a target false-positive rate.

    ``thresholds`` is what the ingester applies (squeezers, confidence, squeeze and combined
    thresholds); ``report`` is the held-out evaluation; ``baseline`` holds, per flag, the highest
    flag rate measured on benign held-out groups (the rate alerts compare against).
    """

    __tablename__ = "detector_calibrations"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(64))
    dataset: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    fpr: Mapped[float] = mapped_column(Float)
    eps: Mapped[float] = mapped_column(Float)
    thresholds: Mapped[dict[str, Any]]
    baseline: Mapped[dict[str, Any]]
    report: Mapped[dict[str, Any]]

    __table_args__ = (
        Index("ix_detector_calibrations_model", "model_name", "model_version", "created_at"),
    )


class CalibrationRequest(Base):
    """A model version the ingester met without a detector calibration: the calibration job
    (scheduler) runs it; a failure is kept with its error and retried with backoff."""

    __tablename__ = "calibration_requests"

    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # running, done, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    calibration_id: Mapped[int | None]

    __table_args__ = (Index("ix_calibration_requests_due", "status", "next_attempt_at"),)


class InputScore(Base):
    """One scored production input (the input itself is not kept; its SHA-256 is)."""

    __tablename__ = "input_scores"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    ts: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(255))
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(255))
    predicted: Mapped[int] = mapped_column(Integer)
    confidence: Mapped[float | None] = mapped_column(Float)
    margin: Mapped[float | None] = mapped_column(Float)
    entropy: Mapped[float | None] = mapped_column(Float)
    divergences: Mapped[dict[str, Any]]
    max_divergence: Mapped[float | None] = mapped_column(Float)
    combined_score: Mapped[float | None] = mapped_column(Float)
    low_confidence: Mapped[bool] = mapped_column(default=False)
    squeeze_suspicious: Mapped[bool] = mapped_column(default=False)
    combined_suspicious: Mapped[bool] = mapped_column(default=False)
    strong_suspicious: Mapped[bool] = mapped_column(default=False, server_default=false())
    flagged: Mapped[bool] = mapped_column(default=False)
    calibration_id: Mapped[int | None] = mapped_column(
        ForeignKey("detector_calibrations.id", ondelete="SET NULL")
    )
    input_sha256: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str | None] = mapped_column(String(1024))
    kept_path: Mapped[str | None] = mapped_column(String(1024))
    # what the ingester did to fit the input to the model ("resized 512x512->224x224; L->RGB")
    conversion: Mapped[str | None] = mapped_column(String(255))
    # what the inline guard answered before the model did (allow, review, refuse) and why;
    # None for records that did not pass through a guard
    guard_verdict: Mapped[str | None] = mapped_column(String(8))
    guard_reason: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("source", "request_id"),
        UniqueConstraint("origin"),
        Index("ix_input_scores_source_ts", "source", "ts"),
        Index("ix_input_scores_ts", "ts"),
        Index("ix_input_scores_model_ts", "model_name", "model_version", "ts"),
    )


class DeadLetter(Base):
    """A production record that could not be scored, with why and where it came from."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    origin: Mapped[str] = mapped_column(String(1024))
    line_number: Mapped[int | None] = mapped_column(BigInteger)
    byte_offset: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(255))
    model_name: Mapped[str | None] = mapped_column(String(255))
    entry_key: Mapped[str | None] = mapped_column(String(1024), unique=True)

    __table_args__ = (Index("ix_dead_letters_received_at", "received_at"),)


class IngestOffset(Base):
    """How far a file has been ingested: committed together with the scores before it."""

    __tablename__ = "ingest_offsets"

    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    inode: Mapped[int | None] = mapped_column(BigInteger)
    offset: Mapped[int] = mapped_column(BigInteger, default=0)
    line_number: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- scheduling --------------------------------------------------------------------------------


class SchedulerJob(Base):
    """APScheduler 3's SQLAlchemyJobStore table, declared here so that one schema owns it."""

    __tablename__ = "apscheduler_jobs"

    id: Mapped[str] = mapped_column(Unicode(191), primary_key=True)
    next_run_time: Mapped[float | None] = mapped_column(Float(25), index=True)
    job_state: Mapped[bytes] = mapped_column(LargeBinary)


class Lease(Base):
    """A named lease: whoever holds an unexpired lease does that work (one active scheduler)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class JobRun(Base):
    """One run of a scheduled job and what it did (enqueued, skipped with reasons, errors)."""

    __tablename__ = "job_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(64))
    holder: Mapped[str] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="running")
    detail: Mapped[dict[str, Any]]

    __table_args__ = (Index("ix_job_runs_job_started", "job", "started_at"),)


class RegistryWatch(Base):
    """What the registry poll has seen: each version (``v:N``) and where each alias pointed."""

    __tablename__ = "registry_watch"

    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


# -- per-source activity, fingerprints and alerts ----------------------------------------------


class SourceRollup(Base):
    """Per source, model version and minute of record time: counts the ingester maintains.

    Rate rules and the dashboard read these instead of scanning ``input_scores``.
    """

    __tablename__ = "source_rollups"

    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)
    flagged: Mapped[int] = mapped_column(Integer, default=0)
    low_confidence: Mapped[int] = mapped_column(Integer, default=0)
    strong: Mapped[int] = mapped_column(Integer, default=0)
    sum_confidence: Mapped[float] = mapped_column(Float, default=0.0)
    max_divergence: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_source_rollups_bucket", "bucket"),)


class SourceActivity(Base):
    """Totals per source and model version; ``dirty`` marks sources with unevaluated inputs."""

    __tablename__ = "source_activity"

    source: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    flagged: Mapped[int] = mapped_column(BigInteger, default=0)
    low_confidence: Mapped[int] = mapped_column(BigInteger, default=0)
    strong: Mapped[int] = mapped_column(BigInteger, default=0)
    sum_confidence: Mapped[float] = mapped_column(Float, default=0.0)
    max_divergence: Mapped[float | None] = mapped_column(Float)
    dirty: Mapped[bool] = mapped_column(default=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the alert rules' per-source sequential tests (monitor.alerts.sequential), between evaluations
    sequential: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # their most significant evidence per rule (``best``) and its smallest p-value (``best_p``)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    best_p: Mapped[float | None] = mapped_column(Float)

    # No secondary indexes: every batch updates these rows, and unindexed columns let
    # PostgreSQL update them in place (HOT); the few-thousand-row scans for dirty rows are cheap.


class InputFingerprint(Base):
    """The fingerprint of one scored input (never the input); ``matched`` once the evaluator
    has compared it with the earlier ones."""

    __tablename__ = "input_fingerprints"

    score_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("input_scores.id", ondelete="CASCADE"), primary_key=True
    )
    ts: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(255))
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(64))
    predicted: Mapped[int] = mapped_column(Integer)
    input_sha256: Mapped[str] = mapped_column(String(64))
    hashes: Mapped[bytes] = mapped_column(LargeBinary)
    matched: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (
        Index("ix_input_fingerprints_matched", "matched"),
        Index("ix_input_fingerprints_model_ts", "model_name", "model_version", "ts"),
    )


class ProbeMatch(Base):
    """A query that nearly repeats an earlier one (shared fingerprint hashes)."""

    __tablename__ = "probe_matches"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    score_id: Mapped[int] = mapped_column(BigInteger)
    matched_score_id: Mapped[int] = mapped_column(BigInteger)
    ts: Mapped[datetime]
    source: Mapped[str] = mapped_column(String(255))
    matched_source: Mapped[str] = mapped_column(String(255))
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(64))
    shared: Mapped[int] = mapped_column(Integer)
    flipped: Mapped[bool] = mapped_column(default=False)

    __table_args__ = (
        Index("ix_probe_matches_source_ts", "source", "ts"),
        Index("ix_probe_matches_model_ts", "model_name", "model_version", "ts"),
    )


class Alert(Base):
    """An incident: every finding about one source (or one group of sources acting together),
    all rules and all models, with the rules as evidence. ``open_key`` is unique while it is
    open or acknowledged; ``rule`` is its most severe rule, ``rules`` all of them."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    rule: Mapped[str] = mapped_column(String(32))
    rules: Mapped[str | None] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(255))
    sources: Mapped[str | None] = mapped_column(Text)  # every address it names, comma-separated
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str | None] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="open")
    summary: Mapped[str] = mapped_column(Text)
    evidence: Mapped[dict[str, Any]]
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]
    # record time (the watermark) when it was closed: the cool-down is counted from there
    closed_watermark: Mapped[datetime | None]
    open_key: Mapped[str | None] = mapped_column(String(600), unique=True)

    events: Mapped[list[AlertEvent]] = relationship(
        back_populates="alert", cascade="all, delete-orphan", order_by="AlertEvent.id"
    )

    __table_args__ = (
        Index("ix_alerts_status_severity", "status", "severity"),
        Index("ix_alerts_source", "source"),
        Index("ix_alerts_key_closed", "rule", "source", "model_name", "closed_at"),
        Index("ix_alerts_last_seen", "last_seen"),
    )


class AlertEvent(Base):
    """The audit trail of an alert: who did what, when, with which note."""

    __tablename__ = "alert_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str | None] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)

    alert: Mapped[Alert] = relationship(back_populates="events")

    __table_args__ = (Index("ix_alert_events_alert_id", "alert_id"),)


class GuardOverride(Base):
    """A triager's standing order for one source at the inline guard: ``refuse`` or ``allow``
    whatever detectors and incidents say, or ``clear`` (back to the policy). Rows are never
    changed: the newest per source is in force, and all of them are the audit trail."""

    __tablename__ = "guard_overrides"

    id: Mapped[int] = mapped_column(primary_key=True)
    source: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(8))  # refuse, allow, clear
    actor: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    note: Mapped[str | None] = mapped_column(Text)
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="SET NULL"))

    __table_args__ = (Index("ix_guard_overrides_source", "source", "id"),)


class NotificationOutbox(Base):
    """A webhook notification written with the alert change; delivered with retries."""

    __tablename__ = "notification_outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None]
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_notification_outbox_due", "delivered_at", "next_attempt_at"),)


# -- release gate --------------------------------------------------------------------------------


class GateDecision(Base):
    """A release-gate decision (or a rollback of a promotion), with its policy and criteria."""

    __tablename__ = "gate_decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), default="decision")  # decision | rollback
    model_name: Mapped[str] = mapped_column(String(255))
    model_version: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16))  # passed | failed | undecided | rolled-back
    reason: Mapped[str] = mapped_column(Text)
    policy_hash: Mapped[str | None] = mapped_column(String(64))
    policy_text: Mapped[str | None] = mapped_column(Text)
    audit_id: Mapped[int | None] = mapped_column(Integer)
    baseline: Mapped[str | None] = mapped_column(String(300))
    baseline_audit_id: Mapped[int | None] = mapped_column(Integer)
    criteria: Mapped[list[Any]] = mapped_column(JSON)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_by: Mapped[str] = mapped_column(String(255))
    promoted_alias: Mapped[str | None] = mapped_column(String(128))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    rolled_back_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_gate_decisions_model", "model_name", "decided_at"),)


class ModelRollup(Base):
    """Per model version and hour of record time: inputs and flags (the dashboard's overview)."""

    __tablename__ = "model_rollups"

    model_name: Mapped[str] = mapped_column(String(255), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(64), primary_key=True)
    bucket: Mapped[datetime] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    flagged: Mapped[int] = mapped_column(BigInteger, default=0)
    low_confidence: Mapped[int] = mapped_column(BigInteger, default=0)
    strong: Mapped[int] = mapped_column(BigInteger, default=0)
    sum_confidence: Mapped[float] = mapped_column(Float, default=0.0)
    max_divergence: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_model_rollups_bucket", "bucket"),)


# -- dashboard -----------------------------------------------------------------------------------


class DashboardSession(Base):
    """A signed-in dashboard session. The cookie carries a random id; only its SHA-256 is kept
    here, so a copy of the database signs nobody in. It ends at ``expires_at`` (absolute limit),
    after the idle limit without requests (``last_seen``), when revoked (sign-out: ``revoked_at``
    and ``revoked_reason``), or when its user's password or role no longer matches
    ``user_stamp``."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(255))
    user_stamp: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        Index("ix_dashboard_sessions_user", "user_name"),
        Index("ix_dashboard_sessions_expires", "expires_at"),
    )
