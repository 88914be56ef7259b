"""The rate rules, each finding saying why it fired in one sentence with its numbers.

- ``flagged-rate``: a source whose inputs are flagged by the detector (squeezing or combined),
  or carry strong adversarial evidence (a combined score above 99.9% of benign calibration
  inputs), far more often than benign traffic: the per-source sequential tests of
  ``monitor.alerts.sequential`` (CUSUM, any pace, any window length), then the false discovery
  rate controlled across sources (Benjamini–Hochberg).
- ``low-confidence``: the same for the low-confidence flag.

The probing rules (near-duplicate queries) are in ``monitor.alerts.families``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from monitor.alerts.sequential import RULE_TIERS, Evidence, SourceTests
from monitor.alerts.settings import AlertSettings
from monitor.alerts.stats import benjamini_hochberg, format_p
from monitor.db.models import InputScore, SourceActivity

TIER_WORDS = {
    "combined_suspicious": "flagged by the combined detector",
    "flagged": "flagged by the detector",
    "strong_suspicious": "with strong adversarial evidence (above 99.9% of benign)",
    "low_confidence": "with low confidence",
}
EVIDENCE_IDS = 10
# strong evidence must stand out from the rest of the source's flags: an attacker's adversarial
# inputs are strong outliers in clean traffic, while a noisy camera shifts everything it sends
# (many moderately flagged inputs, a few strong ones)
STRONG_SHARE = 0.5


@dataclass
class Finding:
    rule: str
    source: str
    model_name: str
    model_version: str | None
    severity: str
    summary: str
    window_start: datetime
    window_end: datetime
    evidence: dict[str, Any] = field(default_factory=dict)


def rate_findings(
    session: Session, marks: dict[tuple[str, str], datetime], settings: AlertSettings
) -> list[Finding]:
    """Findings of the sequential rate tests, with the false discovery rate controlled across
    sources per (rule, model version): Benjamini–Hochberg over every source active within the
    horizon before the watermark, each with its most significant evidence in that horizon. The
    decision depends on the evidence, not on how the records were split into evaluations; each
    piece of evidence is reported until an incident takes it (``mark_reported``)."""
    findings = []
    for (name, version), mark in sorted(marks.items()):
        since = mark - settings.horizon
        key = (SourceActivity.model_name == name, SourceActivity.model_version == version)
        active = session.scalar(
            select(func.count())
            .select_from(SourceActivity)
            .where(*key, SourceActivity.last_seen >= since)
        )
        rows = session.execute(
            select(SourceActivity.source, SourceActivity.best).where(
                *key, SourceActivity.last_seen >= since, SourceActivity.best_p <= settings.fdr
            )
        ).all()
        bests = {r.source: SourceTests.load(None, r.best) for r in rows}
        for rule in RULE_TIERS:
            tested = [
                (source, tests.best[rule])
                for source, tests in sorted(bests.items())
                if rule in tests.best
                and tests.best[rule].end >= since
                and _stands_out(session, source, name, version, tests.best[rule])
            ]
            p_values = [e.p_value for _, e in tested]
            p_values += [1.0] * (max(active or 0, len(tested)) - len(tested))
            rejected = benjamini_hochberg(p_values, settings.fdr)
            for (source, e), reject in zip(tested, rejected, strict=False):
                if reject and rule not in bests[source].reported:
                    findings.append(_rate_finding(session, source, name, version, e, settings))
    return findings


def in_window(source: str, name: str, version: str, start: datetime, end: datetime) -> tuple:
    """The conditions selecting one source's inputs to a model version in a record-time
    window."""
    return (
        InputScore.source == source,
        InputScore.model_name == name,
        InputScore.model_version == version,
        InputScore.ts >= start,
        InputScore.ts <= end,
    )


def _stands_out(session: Session, source: str, name: str, version: str, e: Evidence) -> bool:
    """Strong evidence counts when most of the window's flagged inputs carry it."""
    if e.tier != "strong_suspicious":
        return True
    flagged = session.scalar(
        select(func.count())
        .select_from(InputScore)
        .where(*in_window(source, name, version, e.start, e.end), InputScore.flagged.is_(True))
    )
    return e.k >= STRONG_SHARE * (flagged or 0)


def mark_reported(session: Session, findings: list[Finding]) -> None:
    """Rate evidence that an incident took (or the cool-down suppressed) is not reported again;
    the rest (supporting evidence waiting for an incident) is."""
    by_key: dict[tuple[str, str, str], set[str]] = {}
    for f in findings:
        if f.rule in RULE_TIERS and f.model_version is not None:
            by_key.setdefault((f.source, f.model_name, f.model_version), set()).add(f.rule)
    for (source, name, version), taken in by_key.items():
        where = (
            SourceActivity.source == source,
            SourceActivity.model_name == name,
            SourceActivity.model_version == version,
        )
        tests = SourceTests.load(None, session.scalar(select(SourceActivity.best).where(*where)))
        tests.reported |= taken
        session.execute(update(SourceActivity).where(*where).values(best=tests.best_json()))


def _rate_finding(
    session: Session, source: str, name: str, version: str, e: Evidence, settings: AlertSettings
) -> Finding:
    ratio = (e.k / e.n) / e.p0
    severity = "critical" if ratio >= 8 and e.k >= 20 else "high" if ratio >= 4 else "medium"
    summary = (
        f"source {source}: {e.k} of {e.n} inputs to {name}/{version} {TIER_WORDS[e.tier]} "
        f"in {span_words(e.end - e.start)} of record time, expected {e.n * e.p0:.1f} at a "
        f"benign rate of {e.p0:.1%}, {format_p(e.p_value)}"
    )
    column = getattr(InputScore, e.tier)
    order = (
        InputScore.confidence if e.tier == "low_confidence" else InputScore.combined_score.desc()
    )
    suspicious = list(
        session.scalars(
            select(InputScore.id)
            .where(*in_window(source, name, version, e.start, e.end), column.is_(True))
            .order_by(order)
            .limit(EVIDENCE_IDS)
        )
    )
    details = {
        "tier": e.tier,
        "n": e.n,
        "count": e.k,
        "rate": e.k / e.n,
        "baseline": e.p0,
        "expected": e.n * e.p0,
        "p_value": e.p_value,
        "statistic": e.statistic,
        "alternative_rate": e.q,
        "first_input": e.start_index,
        "test": (
            "CUSUM of the binomial likelihood ratio (anytime-valid p-value), "
            f"Benjamini-Hochberg FDR {settings.fdr} across sources"
        ),
        "suspicious_score_ids": suspicious,
    }
    return Finding(
        rule_for(e.tier), source, name, version, severity, summary, e.start, e.end, details
    )


def rule_for(tier: str) -> str:
    return next(rule for rule, tiers in RULE_TIERS.items() if tier in tiers)


def span_words(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
