"""The alert rules, each returning findings that say why they fired in one sentence.

- ``flagged-rate`` and ``low-confidence``: a source's share of flagged (squeezing or combined)
  or low-confidence inputs in the window, against the benign rate measured at calibration (times
  a safety factor), as a one-sided exact binomial test; the false discovery rate is controlled
  across every source tested in the same evaluation (Benjamini–Hochberg), and the observed rate
  must also be ``min_rate_ratio`` times the baseline.
- ``probing``: a source whose queries nearly repeat its own earlier ones.
- ``probing-distributed``: sources linked by near-duplicate queries across addresses, reported
  as one alert naming all of them (their single-source probing findings are folded into it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from monitor.alerts.settings import AlertSettings
from monitor.alerts.stats import benjamini_hochberg, binomial_p_value, format_p
from monitor.db.models import InputScore, ProbeMatch, SourceActivity, SourceRollup

RATE_RULES = {
    "flagged-rate": ("flagged", "strong_suspicious"),
    "low-confidence": ("low_confidence",),
}
TIER_COUNTS = {
    "flagged": "flagged",
    "strong_suspicious": "strong",
    "low_confidence": "low_confidence",
}
TIER_WORDS = {
    "flagged": "flagged by the detector",
    "strong_suspicious": "with strong adversarial evidence (above 99.9% of benign)",
    "low_confidence": "with low confidence",
}
MIN_STRONG = 3  # strong-evidence alerts need at least this many such inputs
EVIDENCE_IDS = 10


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


@dataclass
class RateCount:
    source: str
    model_name: str
    model_version: str
    window_end: datetime
    n: int
    flagged: int
    low_confidence: int
    strong: int = 0


def _minutes(delta: timedelta) -> str:
    minutes = delta.total_seconds() / 60
    return f"{minutes / 60:g} h" if minutes >= 60 and minutes % 60 == 0 else f"{minutes:g} min"


def window_counts(
    session: Session, keys: list[tuple[str, str, str]], window: timedelta
) -> list[RateCount]:
    """Per (source, model, version): inputs and flags in the window ending at its last input."""
    counts = []
    for i in range(0, len(keys), 400):
        chunk = keys[i : i + 400]
        activity = session.execute(
            select(
                SourceActivity.source,
                SourceActivity.model_name,
                SourceActivity.model_version,
                SourceActivity.last_seen,
            ).where(_key_in(SourceActivity, chunk))
        ).all()
        ends = {(a.source, a.model_name, a.model_version): a.last_seen for a in activity}
        earliest = min(ends.values(), default=None)
        if earliest is None:
            continue
        rows = session.execute(
            select(
                SourceRollup.source,
                SourceRollup.model_name,
                SourceRollup.model_version,
                SourceRollup.bucket,
                SourceRollup.n,
                SourceRollup.flagged,
                SourceRollup.low_confidence,
                SourceRollup.strong,
            ).where(
                _key_in(SourceRollup, chunk),
                SourceRollup.bucket >= earliest - window - timedelta(minutes=1),
            )
        ).all()
        totals: dict[tuple[str, str, str], list[int]] = {k: [0, 0, 0, 0] for k in ends}
        for r in rows:
            key = (r.source, r.model_name, r.model_version)
            if r.bucket >= ends[key].replace(second=0, microsecond=0) - window:
                for j, value in enumerate((r.n, r.flagged, r.low_confidence, r.strong)):
                    totals[key][j] += value
        counts.extend(RateCount(*key, ends[key], *t) for key, t in totals.items())
    return counts


def _key_in(model: Any, keys: list[tuple[str, str, str]]) -> Any:
    from sqlalchemy import tuple_

    return tuple_(model.source, model.model_name, model.model_version).in_(keys)


def rate_findings(
    session: Session,
    counts: list[RateCount],
    baselines: dict[tuple[str, str], dict[str, float]],
    settings: AlertSettings,
) -> list[Finding]:
    """Rate tests for every counted source with enough inputs, FDR-controlled per rule.

    ``flagged-rate`` tests two tiers and takes the smaller p-value (Bonferroni, ×2): the share
    of flagged inputs, and the share of strong evidence (inputs above 99.9% of the benign
    calibration inputs), which catches an attacker hiding a few adversarial inputs in clean
    traffic whose overall flagged share a blurry but benign camera also reaches.
    """
    findings = []
    for rule, tiers in RATE_RULES.items():
        tests = []
        for c in counts:
            baseline = baselines.get((c.model_name, c.model_version))
            if baseline is None or c.n < settings.min_count:
                continue
            candidates = []
            for flag in tiers:
                p0, floor = rate_baseline(baseline, flag, settings)
                k = getattr(c, TIER_COUNTS[flag])
                enough = k >= MIN_STRONG if flag == "strong_suspicious" else True
                if flag in baseline:  # calibrations before the strong tier lack its rate
                    p = min(1.0, binomial_p_value(k, c.n, p0) * len(tiers))
                    candidates.append((p, flag, k, p0, floor, enough))
            if candidates:
                tests.append((c, min(candidates)))
        rejected = benjamini_hochberg([t[1][0] for t in tests], settings.fdr)
        for (c, (p, flag, k, p0, floor, enough)), reject in zip(tests, rejected, strict=True):
            if reject and enough and k / c.n >= floor:
                findings.append(_rate_finding(session, rule, flag, c, k, p0, p, settings))
    return findings


def rate_baseline(
    baseline: dict[str, float], flag: str, settings: AlertSettings
) -> tuple[float, float]:
    """(p0, floor): the benign rate tested against (pooled held-out rate, at least 0.5%, times
    the safety factor) and the least observed rate that may alert (``min_rate_ratio`` × p0 and
    above the worst benign group's rate times the safety factor)."""
    pooled = baseline.get(flag, baseline.get("fpr", 0.05))
    worst = baseline.get(f"{flag}_worst", pooled)
    least = 0.001 if flag == "strong_suspicious" else 0.005
    p0 = min(0.5, max(pooled, least) * settings.baseline_factor)
    floor = max(settings.min_rate_ratio * p0, min(0.9, worst * settings.baseline_factor))
    return p0, floor


def _rate_finding(
    session: Session,
    rule: str,
    flag: str,
    c: RateCount,
    k: int,
    p0: float,
    p: float,
    settings: AlertSettings,
) -> Finding:
    start = c.window_end - settings.window
    ratio = (k / c.n) / p0
    severity = "critical" if ratio >= 8 and k >= 20 else "high" if ratio >= 4 else "medium"
    summary = (
        f"source {c.source}: {k} of {c.n} inputs to {c.model_name}/{c.model_version} "
        f"{TIER_WORDS[flag]} in {_minutes(settings.window)}, expected {c.n * p0:.1f} at "
        f"a benign rate of {p0:.1%}, {format_p(p)}"
    )
    column = getattr(InputScore, flag)
    order = InputScore.confidence if flag == "low_confidence" else InputScore.combined_score.desc()
    suspicious = list(
        session.scalars(
            select(InputScore.id)
            .where(
                InputScore.source == c.source,
                InputScore.model_name == c.model_name,
                InputScore.model_version == c.model_version,
                InputScore.ts >= start,
                InputScore.ts <= c.window_end,
                column.is_(True),
            )
            .order_by(order)
            .limit(EVIDENCE_IDS)
        )
    )
    evidence = {
        "tier": flag,
        "n": c.n,
        "count": k,
        "rate": k / c.n,
        "baseline": p0,
        "expected": c.n * p0,
        "p_value": p,
        "test": f"one-sided exact binomial, Benjamini-Hochberg FDR {settings.fdr}",
        "suspicious_score_ids": suspicious,
    }
    return Finding(
        rule,
        c.source,
        c.model_name,
        c.model_version,
        severity,
        summary,
        start,
        c.window_end,
        evidence,
    )


def probing_findings(
    session: Session, touched: set[tuple[str, str, str]], settings: AlertSettings
) -> list[Finding]:
    """Single-source and distributed probing, for the models of the touched sources."""
    findings: list[Finding] = []
    for model_name, model_version in sorted({(m, v) for _, m, v in touched}):
        end = session.scalar(
            select(func.max(ProbeMatch.ts)).where(
                ProbeMatch.model_name == model_name, ProbeMatch.model_version == model_version
            )
        )
        if end is None:
            continue
        start = end - settings.probe_window
        matches = session.execute(
            select(
                ProbeMatch.score_id,
                ProbeMatch.matched_score_id,
                ProbeMatch.source,
                ProbeMatch.matched_source,
                ProbeMatch.shared,
                ProbeMatch.flipped,
                ProbeMatch.ts,
            ).where(
                and_(
                    ProbeMatch.model_name == model_name,
                    ProbeMatch.model_version == model_version,
                    ProbeMatch.ts >= start,
                )
            )
        ).all()
        findings.extend(_probing(matches, model_name, model_version, start, end, settings))
    return findings


def _probing(
    matches: list[Any],
    model_name: str,
    model_version: str,
    start: datetime,
    end: datetime,
    settings: AlertSettings,
) -> list[Finding]:
    groups = _source_groups(matches)
    by_source: dict[str, list[Any]] = {}
    for m in matches:
        by_source.setdefault(m.source, []).append(m)
    findings = []
    grouped: set[str] = set()
    for sources in groups:
        if len(sources) < 2:
            continue
        rows = [m for s in sources for m in by_source.get(s, [])]
        queries = {m.score_id for m in rows}
        if len(queries) < settings.probe_min_matches:
            continue
        grouped |= sources
        flips = len({m.score_id for m in rows if m.flipped})
        names = sorted(sources)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        summary = (
            f"{len(names)} sources ({shown}) sent {len(queries)} near-duplicate queries "
            f"to {model_name}/{model_version} in {_minutes(settings.probe_window)}, "
            f"{flips} of them flipping the predicted class: one query attack spread "
            "over many addresses"
        )
        findings.append(
            Finding(
                "probing-distributed",
                names[0],
                model_name,
                model_version,
                "critical",
                summary,
                start,
                end,
                {
                    "sources": names,
                    "queries": len(queries),
                    "flips": flips,
                    "suspicious_score_ids": sorted(queries)[-EVIDENCE_IDS:],
                },
            )
        )
    for source, rows in by_source.items():
        own = [m for m in rows if m.matched_source == source]
        queries = {m.score_id for m in own}
        if source in grouped or len(queries) < settings.probe_min_matches:
            continue
        flips = len({m.score_id for m in own if m.flipped})
        shared = min(m.shared for m in own)
        summary = (
            f"source {source}: {len(queries)} queries to {model_name}/{model_version} "
            f"in {_minutes(settings.probe_window)} nearly repeat its earlier ones (at "
            f"least {shared} fingerprint hashes shared), {flips} of them flipping the "
            "predicted class"
        )
        findings.append(
            Finding(
                "probing",
                source,
                model_name,
                model_version,
                "critical" if flips >= 3 else "high",
                summary,
                start,
                end,
                {
                    "queries": len(queries),
                    "flips": flips,
                    "min_shared": shared,
                    "suspicious_score_ids": sorted(queries)[-EVIDENCE_IDS:],
                },
            )
        )
    return findings


def _source_groups(matches: list[Any], min_links: int = 2) -> list[set[str]]:
    """Sources connected by cross-source near-duplicates (union-find). Two sources are linked
    only by at least ``min_links`` matches, so a rare chance match cannot pull a benign source
    into an attacker's group."""
    from collections import Counter

    links = Counter(
        frozenset((m.source, m.matched_source)) for m in matches if m.source != m.matched_source
    )
    parent: dict[str, str] = {}

    def find(s: str) -> str:
        parent.setdefault(s, s)
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    for pair, count in links.items():
        if count >= min_links:
            a, b = tuple(pair)
            parent[find(a)] = find(b)
    groups: dict[str, set[str]] = {}
    for s in list(parent):
        groups.setdefault(find(s), set()).add(s)
    return list(groups.values())
