"""Every query the dashboard's pages run, returning plain data. Nothing here recomputes a score:
audits, calibrations, rollups and alerts are read as the rest of robmon stored them.

Large tables are never scanned whole: volumes come from ``model_rollups`` (hourly) and
``source_rollups`` (per minute), the sources table from ``source_activity``, histograms from the
newest inputs only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Float, and_, case, cast, func, or_, select

from monitor.alerts.queries import rule_in
from monitor.audit.config import ATTACK_NAMES, eps_text, headline_rank, stored_preset
from monitor.db.models import (
    Alert,
    Audit,
    AuditArtifact,
    AuditClassResult,
    AuditResult,
    DeadLetter,
    DetectorCalibration,
    InputScore,
    ModelRollup,
    SourceActivity,
    SourceRollup,
)
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.ingest.dead_letters import reason_kind

SEVERITIES = ("critical", "high", "medium", "low")
HISTOGRAM_INPUTS = 20_000
REASON_WINDOW = 10_000  # dead letters counted by reason: the newest this many


# -- overview --------------------------------------------------------------------------------


@dataclass
class ModelOverview:
    name: str
    champion: str | None
    score: float | None
    score_preset: str | None  # the preset of the audit the score comes from
    trend: list[tuple[datetime, float, str]]  # (finished, score, version)
    last_audit_status: str | None
    last_audit_at: datetime | None
    open_alerts: dict[str, int]
    volume_24h: int
    flagged_rate_24h: float | None
    volume_7d: int
    flagged_rate_7d: float | None


def model_names(db: Database) -> list[str]:
    """Every model with audits or production inputs."""
    with db.session() as s:
        audited = set(s.scalars(select(Audit.model_name).distinct()))
        seen = set(s.scalars(select(ModelRollup.model_name).distinct()))
    return sorted(audited | seen)


def overview(
    db: Database, champions: dict[str, str | None], now: datetime | None = None
) -> list[ModelOverview]:
    """One row per model: its champion's score and trend, last audit, alerts, volumes."""
    now = now or utcnow()
    names = model_names(db)
    with db.session() as s:
        audits = s.execute(
            select(
                Audit.model_name,
                Audit.model_version,
                Audit.status,
                Audit.score,
                Audit.created_at,
                Audit.finished_at,
                Audit.config,
                Audit.config_hash,
                Audit.id,
            )
            .where(Audit.model_name.in_(names))
            .order_by(Audit.id)
        ).all()
        alerts = s.execute(
            select(Alert.model_name, Alert.severity, func.count())
            .where(Alert.status.in_(("open", "acknowledged")))
            .group_by(Alert.model_name, Alert.severity)
        ).all()
        volumes = {}
        # production volumes in record time: the day and week before each model's newest input
        # (a backlog ingested late shows as it happened; ``now`` caps records dated ahead)
        newest = dict(
            s.execute(
                select(ModelRollup.model_name, func.max(ModelRollup.bucket)).group_by(
                    ModelRollup.model_name
                )
            ).all()
        )
        for name, mark in newest.items():
            end = min(mark, now)
            for label, span in (("24h", timedelta(hours=23)), ("7d", timedelta(days=7, hours=-1))):
                n, flagged = s.execute(
                    select(func.sum(ModelRollup.n), func.sum(ModelRollup.flagged)).where(
                        ModelRollup.model_name == name, ModelRollup.bucket >= end - span
                    )
                ).one()
                volumes[(name, label)] = (int(n or 0), int(flagged or 0))
    rows = []
    for name in names:
        mine = [a for a in audits if a.model_name == name]
        champion = champions.get(name)
        succeeded = [a for a in mine if a.status == "succeeded" and a.score is not None]
        of_champion = [a for a in succeeded if a.model_version == champion] or succeeded
        # the headline: the most trustworthy configuration (gate-grade preset, whole dataset,
        # default grid), newest first; the trend compares only audits of that configuration
        headline = max(of_champion, key=lambda a: (headline_rank(a.config), a.id), default=None)
        if headline is not None:
            succeeded = [a for a in succeeded if a.config_hash == headline.config_hash]
        last = mine[-1] if mine else None
        v24, v7 = volumes.get((name, "24h"), (0, 0)), volumes.get((name, "7d"), (0, 0))
        rows.append(
            ModelOverview(
                name=name,
                champion=champion,
                score=headline.score if headline else None,
                score_preset=stored_preset(headline.config) if headline else None,
                trend=[
                    (a.finished_at or a.created_at, a.score, a.model_version) for a in succeeded
                ],
                last_audit_status=last.status if last else None,
                last_audit_at=(last.finished_at or last.created_at) if last else None,
                open_alerts={sev: n for m, sev, n in alerts if m == name},
                volume_24h=v24[0],
                flagged_rate_24h=v24[1] / v24[0] if v24[0] else None,
                volume_7d=v7[0],
                flagged_rate_7d=v7[1] / v7[0] if v7[0] else None,
            )
        )
    return rows


def record_watermark(db: Database, now: datetime | None = None) -> datetime:
    """The end of the newest hour of record time ingested (production charts end there, not at
    the wall clock, so a backlog shows as it happened); ``now`` when nothing was ingested."""
    now = now or utcnow()
    with db.session() as s:
        newest = s.scalar(select(func.max(ModelRollup.bucket)))
    return min(newest + timedelta(hours=1), now) if newest is not None else now


def hourly_volume(db: Database, model: str, since: datetime) -> list[dict[str, Any]]:
    with db.session() as s:
        return [
            {"bucket": b, "inputs": int(n), "flagged": int(f)}
            for b, n, f in s.execute(
                select(ModelRollup.bucket, func.sum(ModelRollup.n), func.sum(ModelRollup.flagged))
                .where(ModelRollup.model_name == model, ModelRollup.bucket >= since)
                .group_by(ModelRollup.bucket)
                .order_by(ModelRollup.bucket)
            )
        ]


# -- model page --------------------------------------------------------------------------------


@dataclass
class ConfigAudit:
    """The newest succeeded audit of one model version under one configuration."""

    version: str
    audit_id: int
    config_hash: str
    label: str  # the configuration, readable: attacks, norms and eps grid, steps, limit, dataset
    finished_at: datetime | None
    clean_accuracy: float | None
    score: float | None
    mlflow_run_id: str | None
    points: list[dict[str, Any]] = field(default_factory=list)  # attack, norm, eps, threat, acc


def newest_audits(db: Database, model: str) -> list[ConfigAudit]:
    """Per (version, configuration) of ``model``, its newest succeeded audit with the robust
    accuracy of each (attack, norm, eps, threat); newest first. A configuration re-audited
    later (``--force``) shows its latest numbers; every other configuration stays pickable."""
    rank = (
        func.row_number()
        .over(
            partition_by=(Audit.model_version, Audit.config_hash),
            order_by=(Audit.finished_at.desc(), Audit.id.desc()),
        )
        .label("rank")
    )
    ranked = (
        select(Audit.id, rank)
        .where(Audit.model_name == model, Audit.status == "succeeded")
        .subquery()
    )
    with db.session() as s:
        audits = s.execute(
            select(
                Audit.id,
                Audit.model_version,
                Audit.config_hash,
                Audit.config,
                Audit.dataset,
                Audit.finished_at,
                Audit.clean_accuracy,
                Audit.score,
                Audit.mlflow_run_id,
            )
            .join(ranked, ranked.c.id == Audit.id)
            .where(ranked.c.rank == 1)
            .order_by(Audit.finished_at.desc(), Audit.id.desc())
        ).all()
        results = s.execute(
            select(
                AuditResult.audit_id,
                AuditResult.attack,
                AuditResult.norm,
                AuditResult.eps,
                AuditResult.threat,
                AuditResult.robust_accuracy,
            )
            .where(AuditResult.audit_id.in_([a.id for a in audits]))
            .order_by(AuditResult.id)
        ).all()
    points: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        points.setdefault(r.audit_id, []).append(
            {
                "attack": r.attack,
                "norm": r.norm,
                "eps": r.eps,
                "threat": r.threat,
                "robust_accuracy": r.robust_accuracy,
            }
        )
    return [
        ConfigAudit(
            a.model_version,
            a.id,
            a.config_hash,
            config_label(a.config or {}, a.dataset, a.config_hash),
            a.finished_at,
            a.clean_accuracy,
            a.score,
            a.mlflow_run_id,
            points.get(a.id, []),
        )
        for a in audits
    ]


NORM_NAMES = {"linf": "L∞", "l2": "L2"}


def config_label(config: dict[str, Any], dataset: str, config_hash: str) -> str:
    """An audit configuration in one line, e.g. ``FGSM, PGD · L∞ 2/255, 8/255 · 10 steps ·
    100 images · digits · 1a2b3c4d`` (the hash's start tells apart what the rest does not)."""
    attacks = ", ".join(a.upper() for a in config.get("attacks") or []) or "attacks ?"
    preset = stored_preset(config)
    joiner = " → " if config.get("chain") else ", "
    if config.get("chain"):
        attacks = joiner.join(a.upper() for a in sorted(config["attacks"], key=ATTACK_NAMES.index))
    parts = [f"{preset}: {attacks}" if preset != "custom" else attacks]
    eps = config.get("eps")
    for norm in config.get("norms") or []:
        grid = eps.get(norm) if isinstance(eps, dict) else eps
        values = ", ".join(eps_text(e) for e in grid) if grid else "default eps"
        parts.append(f"{NORM_NAMES.get(norm, norm)} {values}")
    if config.get("input_kind"):  # the grid is the default for this kind of input
        parts.append(f"{config['input_kind']} default eps")
    if config.get("steps") is not None and "pgd" in (config.get("attacks") or []):
        parts.append(f"{config['steps']} steps")
    if config.get("queries") and "square" in (config.get("attacks") or []):
        parts.append(f"{config['queries']} queries")
    if (config.get("restarts") or 1) > 1:
        parts.append(f"{config['restarts']} restarts")
    limit = config.get("limit")
    parts.append(f"{limit} images" if limit else "all images")
    if config.get("adaptive") is False:
        parts.append("naive (no BPDA/EOT)")
    if config.get("surrogate"):
        parts.append(f"surrogate {config['surrogate']}")
    if config.get("seed"):
        parts.append(f"seed {config['seed']}")
    name = str(config.get("dataset") or dataset)
    parts += [name.replace("\\", "/").rsplit("/", 1)[-1], config_hash[:8]]
    return " · ".join(parts)


def class_matrix(db: Database, audit_id: int) -> dict[str, Any]:
    """Per-class accuracy of an audit: clean and the strongest attack at each eps."""
    with db.session() as s:
        rows = s.execute(
            select(
                AuditClassResult.attack,
                AuditClassResult.norm,
                AuditClassResult.eps,
                AuditClassResult.threat,
                AuditClassResult.label,
                AuditClassResult.accuracy,
            ).where(AuditClassResult.audit_id == audit_id)
        ).all()
    labels = sorted({r.label for r in rows})
    columns: dict[str, dict[int, float]] = {"clean": {}}
    for r in rows:
        key = "clean" if r.threat == "clean" else f"{r.norm} {r.eps:g}"
        current = columns.setdefault(key, {})
        current[r.label] = min(current.get(r.label, 1.0), r.accuracy)
    order = [
        "clean",
        *sorted(
            (k for k in columns if k != "clean"), key=lambda k: (k.split()[0], float(k.split()[1]))
        ),
    ]
    return {
        "labels": labels,
        "columns": order,
        "values": [[columns[c].get(label) for c in order] for label in labels],
    }


def artifact_names(db: Database, audit_id: int) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(AuditArtifact.name).where(AuditArtifact.audit_id == audit_id)))


# -- audits ------------------------------------------------------------------------------------


def audit_page(
    db: Database,
    *,
    model: str | None = None,
    status: str | None = None,
    trigger: str | None = None,
    page: int = 0,
    size: int = 20,
) -> tuple[list[dict[str, Any]], int]:
    """A page of audits, newest first, and how many match the filters."""
    conditions = []
    for column, value in (
        (Audit.model_name, model),
        (Audit.status, status),
        (Audit.trigger, trigger),
    ):
        if value:
            conditions.append(column == value)
    where = and_(*conditions) if conditions else True
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(Audit).where(where))
        rows = s.execute(
            select(
                Audit.id,
                Audit.model_name,
                Audit.model_version,
                Audit.dataset,
                Audit.status,
                Audit.trigger,
                Audit.created_at,
                Audit.clean_accuracy,
                Audit.score,
                Audit.error,
            )
            .where(where)
            .order_by(Audit.id.desc())
            .offset(page * size)
            .limit(size)
        ).all()
    return [dict(r._mapping) for r in rows], int(total or 0)


def audit_filter_values(db: Database) -> dict[str, list[str]]:
    with db.session() as s:
        return {
            "model": sorted(s.scalars(select(Audit.model_name).distinct())),
            "status": sorted(s.scalars(select(Audit.status).distinct())),
            "trigger": sorted(s.scalars(select(Audit.trigger).distinct())),
        }


# -- sources -----------------------------------------------------------------------------------

SOURCE_SORTS = {
    "source": SourceActivity.source,
    "model": SourceActivity.model_name,
    "inputs": SourceActivity.n,
    "flagged_rate": cast(SourceActivity.flagged, Float) / SourceActivity.n,
    "low_confidence_rate": cast(SourceActivity.low_confidence, Float) / SourceActivity.n,
    "mean_confidence": SourceActivity.sum_confidence / SourceActivity.n,
    "max_divergence": SourceActivity.max_divergence,
    "last_seen": SourceActivity.last_seen,
}


def source_page(
    db: Database,
    *,
    model: str | None = None,
    search: str | None = None,
    min_flagged_rate: float | None = None,
    sort: str = "flagged_rate",
    descending: bool = True,
    page: int = 0,
    size: int = 25,
) -> tuple[list[dict[str, Any]], int]:
    """A page of per-source statistics (sorted, filtered, paginated in the database) with each
    source's open alerts, and how many rows match."""
    conditions = [SourceActivity.n > 0]
    if model:
        conditions.append(SourceActivity.model_name == model)
    if search:
        conditions.append(SourceActivity.source.contains(search, autoescape=True))
    if min_flagged_rate:
        conditions.append(SOURCE_SORTS["flagged_rate"] >= min_flagged_rate)
    order = SOURCE_SORTS.get(sort, SOURCE_SORTS["flagged_rate"])
    order = order.desc() if descending else order.asc()
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(SourceActivity).where(and_(*conditions)))
        rows = (
            s.execute(
                select(SourceActivity)
                .where(and_(*conditions))
                .order_by(order, SourceActivity.source)
                .offset(page * size)
                .limit(size)
            )
            .scalars()
            .all()
        )
        names = [r.source for r in rows]
        alerts = open_alert_counts(s, names)
    return [
        {
            "source": r.source,
            "model": f"{r.model_name}/{r.model_version}",
            "inputs": r.n,
            "flagged_rate": r.flagged / r.n,
            "low_confidence_rate": r.low_confidence / r.n,
            "mean_confidence": r.sum_confidence / r.n,
            "max_divergence": r.max_divergence,
            "open_alerts": alerts.get(r.source, 0),
            "last_seen": r.last_seen,
        }
        for r in rows
    ], int(total or 0)


def open_alert_counts(session: Any, sources: list[str]) -> dict[str, int]:
    """Open incidents per source, counting an incident for every address it names (a
    distributed attack's group; there are few active incidents, so their evidence is read
    directly)."""
    if not sources:
        return {}
    counts: dict[str, int] = {}
    wanted = set(sources)
    for source, evidence in session.execute(
        select(Alert.source, Alert.evidence).where(Alert.status.in_(("open", "acknowledged")))
    ):
        for named in set((evidence or {}).get("sources") or [source]) & wanted:
            counts[named] = counts.get(named, 0) + 1
    return counts


def source_series(db: Database, source: str, since: datetime | None = None) -> list[dict[str, Any]]:
    """A source's inputs and flags per minute (from the rollups)."""
    conditions = [SourceRollup.source == source]
    if since is not None:
        conditions.append(SourceRollup.bucket >= since)
    with db.session() as s:
        return [
            {"bucket": b, "inputs": int(n), "flagged": int(f), "low_confidence": int(lc)}
            for b, n, f, lc in s.execute(
                select(
                    SourceRollup.bucket,
                    func.sum(SourceRollup.n),
                    func.sum(SourceRollup.flagged),
                    func.sum(SourceRollup.low_confidence),
                )
                .where(*conditions)
                .group_by(SourceRollup.bucket)
                .order_by(SourceRollup.bucket)
            )
        ]


def score_sample(
    db: Database, source: str | None = None, model: str | None = None, limit: int = HISTOGRAM_INPUTS
) -> dict[str, list[float]]:
    """Confidence and squeezing divergence of the newest inputs (of one source or model)."""
    query = select(InputScore.confidence, InputScore.max_divergence)
    if source:
        query = query.where(InputScore.source == source).order_by(InputScore.ts.desc())
    else:
        query = query.order_by(InputScore.id.desc())
    if model:
        query = query.where(InputScore.model_name == model)
    with db.session() as s:
        rows = s.execute(query.limit(limit)).all()
    return {
        "confidence": [r.confidence for r in rows if r.confidence is not None],
        "divergence": [r.max_divergence for r in rows if r.max_divergence is not None],
    }


def thresholds(db: Database, model: str | None = None) -> dict[str, float] | None:
    """The newest calibration's confidence and squeezing thresholds (of a model, or any)."""
    query = select(
        DetectorCalibration.thresholds,
        DetectorCalibration.model_name,
        DetectorCalibration.model_version,
    )
    if model:
        query = query.where(DetectorCalibration.model_name == model)
    with db.session() as s:
        row = s.execute(query.order_by(DetectorCalibration.id.desc()).limit(1)).first()
    if row is None:
        return None
    t = row.thresholds
    return {
        "confidence": t.get("confidence"),
        "squeeze": t.get("squeeze"),
        "model": f"{row.model_name}/{row.model_version}",
    }


def source_models(db: Database) -> list[str]:
    with db.session() as s:
        return sorted(s.scalars(select(SourceActivity.model_name).distinct()))


# -- alerts ------------------------------------------------------------------------------------


def alert_page(
    db: Database,
    *,
    status: str | None = None,
    severity: str | None = None,
    rule: str | None = None,
    model: str | None = None,
    source: str | None = None,
    page: int = 0,
    size: int = 20,
) -> tuple[list[dict[str, Any]], int]:
    """The triage queue: filtered, most severe and most recent first, and the match count."""
    conditions = []
    if status == "active":
        conditions.append(Alert.status.in_(("open", "acknowledged")))
    elif status:
        conditions.append(Alert.status == status)
    for column, value in (
        (Alert.severity, severity),
        (Alert.model_name, model),
    ):
        if value:
            conditions.append(column == value)
    if rule:
        conditions.append(rule_in(rule))
    if source:
        conditions.append(
            or_(
                Alert.source.contains(source, autoescape=True),
                Alert.sources.contains(source, autoescape=True),
            )
        )
    where = and_(*conditions) if conditions else True
    rank = case({s: i for i, s in enumerate(SEVERITIES)}, value=Alert.severity, else_=9)
    with db.session() as s:
        total = s.scalar(select(func.count()).select_from(Alert).where(where))
        rows = s.execute(
            select(
                Alert.id,
                Alert.severity,
                Alert.status,
                Alert.rule,
                Alert.rules,
                Alert.source,
                Alert.model_name,
                Alert.model_version,
                Alert.last_seen,
                Alert.summary,
            )
            .where(where)
            .order_by(rank, Alert.last_seen.desc(), Alert.id.desc())
            .offset(page * size)
            .limit(size)
        ).all()
    return [dict(r._mapping) for r in rows], int(total or 0)


def alert_filter_values(db: Database) -> dict[str, list[str]]:
    with db.session() as s:
        return {
            "rule": sorted(
                {
                    r
                    for rules in s.scalars(select(Alert.rules).distinct())
                    for r in (rules or "").split(",")
                    if r
                }
                | set(s.scalars(select(Alert.rule).distinct()))
            ),
            "model": sorted(s.scalars(select(Alert.model_name).distinct())),
        }


def kept_inputs(db: Database, score_ids: list[int]) -> list[dict[str, Any]]:
    """Flagged inputs kept as PNG (``--keep-flagged``) among an alert's evidence."""
    if not score_ids:
        return []
    with db.session() as s:
        rows = s.execute(
            select(
                InputScore.id,
                InputScore.kept_path,
                InputScore.predicted,
                InputScore.confidence,
                InputScore.conversion,
            ).where(InputScore.id.in_(score_ids), InputScore.kept_path.is_not(None))
        ).all()
    return [dict(r._mapping) for r in rows]


def kept_path(db: Database, score_id: int) -> str | None:
    with db.session() as s:
        return s.scalar(select(InputScore.kept_path).where(InputScore.id == score_id))


# -- dead letters ------------------------------------------------------------------------------


def dead_letter_page(
    db: Database, *, kind: str | None = None, page: int = 0, size: int = 25
) -> tuple[list[dict[str, Any]], int]:
    """Production records that could not be scored, newest first, and how many match: all of
    them, or those of the newest ``REASON_WINDOW`` whose reason is of ``kind``
    (``monitor.ingest.dead_letters.reason_kind``: the wording without its quoted values)."""
    columns = (
        DeadLetter.id,
        DeadLetter.received_at,
        DeadLetter.source,
        DeadLetter.model_name,
        DeadLetter.reason,
        DeadLetter.excerpt,
        DeadLetter.origin,
        DeadLetter.line_number,
    )
    newest_first = (DeadLetter.received_at.desc(), DeadLetter.id.desc())
    with db.session() as s:
        if kind is None:
            total = s.scalar(select(func.count()).select_from(DeadLetter))
            query = select(*columns).order_by(*newest_first).offset(page * size).limit(size)
        else:  # the kind is computed, not stored: match the newest window's ids, page by id
            recent = s.execute(
                select(DeadLetter.id, DeadLetter.reason)
                .order_by(*newest_first)
                .limit(REASON_WINDOW)
            )
            ids = [i for i, reason in recent if reason_kind(reason) == kind]
            total = len(ids)
            chosen = ids[page * size : (page + 1) * size]
            query = select(*columns).where(DeadLetter.id.in_(chosen)).order_by(*newest_first)
        rows = s.execute(query).all()
    return [dict(r._mapping) for r in rows], int(total or 0)


def dead_letter_reasons(
    db: Database, window: int = REASON_WINDOW, top: int = 20
) -> list[dict[str, Any]]:
    """How many of the newest ``window`` dead letters each kind of reason holds (quoted values
    and numbers left out, as ``robmon dead-letters list`` counts), most frequent first (the
    ``top`` kinds), each with its newest full reason as an example."""
    newest = (
        select(DeadLetter.reason, DeadLetter.received_at, DeadLetter.id)
        .order_by(DeadLetter.received_at.desc(), DeadLetter.id.desc())
        .limit(window)
        .subquery()
    )
    with db.session() as s:
        rows = s.execute(
            select(newest.c.reason, func.count(), func.max(newest.c.received_at))
            .group_by(newest.c.reason)
            .order_by(func.max(newest.c.received_at).desc())
        ).all()
    kinds: dict[str, dict[str, Any]] = {}
    for reason, n, _last in rows:  # newest reason first: the first seen is the example
        kind = kinds.setdefault(
            reason_kind(reason), {"reason": reason_kind(reason), "count": 0, "example": reason}
        )
        kind["count"] += int(n)
    return sorted(kinds.values(), key=lambda k: (-k["count"], k["reason"]))[:top]
