"""The probing rules: query attacks told apart from popular content by how their queries hang
together.

A query-based black-box attack (SimBA, Square, boundary attacks) sends many variants of one
seed image, each a few pixels away from an earlier one, one after another. Popular content is
also near-duplicated across sources (the same picture re-encoded or re-lit), but each source
sends it once or twice, between its other inputs. So the matcher's near-duplicate pairs
(``probe_matches``) are read as families:

- a **family**: queries linked by close near-duplicate pairs (at least ``STRONG`` × the match
  threshold of shared hashes, so that the rare chance match between two unrelated images, just
  above the threshold, does not chain families together), from any address;
- a **member** of a family: an address that sent at least ``probe_member_min`` of its queries,
  making up at least ``probe_min_density`` of everything the address sent between the first and
  the last of them (a camera that sends one popular picture three times in a day is not a
  member; an attacker's stream of variants is);
- **probing**: one address that is the only member of its families, with ``probe_min_matches``
  variants in them together;
- **probing-distributed**: a family with several members (one seed attacked from many
  addresses), together ``probe_min_matches`` variants: one finding naming every member. Sources
  that only share a few pictures with others never join a group, however many they share.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.alerts.rules import EVIDENCE_IDS, Finding, in_window, span_words
from monitor.alerts.settings import AlertSettings
from monitor.db.models import InputScore, ProbeMatch

STRONG = 1.5


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def probing_findings(
    session: Session,
    spans: dict[tuple[str, str], tuple[datetime, datetime]],
    min_shared: dict[tuple[str, str], int],
    settings: AlertSettings,
) -> list[Finding]:
    """Probing findings for each model version with new near-duplicates, from the matches of
    the probe window before the first new one up to the last."""
    findings: list[Finding] = []
    for (name, version), (first, last) in sorted(spans.items()):
        matches = session.execute(
            select(
                ProbeMatch.score_id,
                ProbeMatch.matched_score_id,
                ProbeMatch.source,
                ProbeMatch.matched_source,
                ProbeMatch.flipped,
                ProbeMatch.ts,
                ProbeMatch.shared,
            ).where(
                ProbeMatch.model_name == name,
                ProbeMatch.model_version == version,
                ProbeMatch.ts >= first - settings.probe_window,
                ProbeMatch.ts <= last,
            )
        ).all()
        if matches:
            close = STRONG * min_shared[(name, version)]
            findings.extend(_findings(session, matches, close, name, version, settings))
    return findings


def _findings(
    session: Session,
    matches: list[Any],
    close: float,
    name: str,
    version: str,
    settings: AlertSettings,
) -> list[Finding]:
    owner: dict[int, str] = {}
    when: dict[int, datetime] = {}
    flipped: set[int] = set()
    linked = _UnionFind()
    for m in matches:
        if m.shared < close:
            continue
        owner[m.score_id], owner[m.matched_score_id] = m.source, m.matched_source
        when[m.score_id] = m.ts
        linked.union(m.score_id, m.matched_score_id)
        if m.flipped:
            flipped.add(m.score_id)
    _fill_times(session, when, [i for i in owner if i not in when])
    by_family: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for score_id, source in owner.items():
        by_family[linked.find(score_id)][source].append(score_id)
    groups: list[dict[str, list[int]]] = []
    single: dict[str, list[int]] = defaultdict(list)
    for family in by_family.values():
        members = {
            source: sorted(ids)
            for source, ids in family.items()
            if len(ids) >= settings.probe_member_min
            and _dense(session, source, name, version, ids, when, settings)
        }
        if len(members) == 1:
            [(source, ids)] = members.items()
            single[source] += ids
        elif members:
            groups.append(members)
    findings = []
    for members in _campaigns(groups):
        queries = sorted(i for ids in members.values() for i in ids)
        if len(queries) >= settings.probe_min_matches:
            findings.append(_distributed(members, queries, flipped, when, name, version))
    grouped = {s for f in findings for s in f.evidence["sources"]}
    for source, ids in single.items():
        if source not in grouped and len(ids) >= settings.probe_min_matches:
            findings.append(_single(source, sorted(ids), flipped, when, name, version))
    return findings


def _campaigns(groups: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
    """Families attacked from overlapping sets of addresses are one campaign (one attacker
    moving on to the next seed image with the same addresses)."""
    merged: list[dict[str, list[int]]] = []
    for group in groups:
        overlapping = [m for m in merged if set(m) & set(group)]
        combined: dict[str, list[int]] = defaultdict(list)
        for members in [*overlapping, group]:
            for source, ids in members.items():
                combined[source] += ids
        merged = [m for m in merged if not any(m is o for o in overlapping)] + [dict(combined)]
    return merged


def _fill_times(session: Session, when: dict[int, datetime], missing: list[int]) -> None:
    for i in range(0, len(missing), 500):
        chunk = missing[i : i + 500]
        for score_id, ts in session.execute(
            select(InputScore.id, InputScore.ts).where(InputScore.id.in_(chunk))
        ):
            when[score_id] = ts


def _dense(
    session: Session,
    source: str,
    name: str,
    version: str,
    ids: list[int],
    when: dict[int, datetime],
    settings: AlertSettings,
) -> bool:
    """Whether a family's variants are most of what its address sent meanwhile."""
    times = [when[i] for i in ids if i in when]
    if not times:
        return False
    sent = session.scalar(
        select(func.count())
        .select_from(InputScore)
        .where(*in_window(source, name, version, min(times), max(times)))
    )
    return len(ids) >= settings.probe_min_density * max(1, sent or 0)


def _window(ids: list[int], when: dict[int, datetime]) -> tuple[datetime, datetime]:
    times = [when[i] for i in ids if i in when]
    return min(times), max(times)


def _distributed(
    members: dict[str, list[int]],
    queries: list[int],
    flipped: set[int],
    when: dict[int, datetime],
    name: str,
    version: str,
) -> Finding:
    names = sorted(members)
    flips = len(flipped.intersection(queries))
    start, end = _window(queries, when)
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    summary = (
        f"{len(names)} sources ({shown}) sent {len(queries)} near-duplicate queries of the "
        f"same seed images to {name}/{version} in {span_words(end - start)}, each address several "
        f"variants in a row, {flips} of them flipping the predicted class: one query attack "
        "spread over many addresses"
    )
    evidence = {
        "sources": names,
        "queries": len(queries),
        "per_source": {s: len(ids) for s, ids in sorted(members.items())},
        "flips": flips,
        "suspicious_score_ids": queries[-EVIDENCE_IDS:],
    }
    return Finding(
        "probing-distributed", names[0], name, version, "critical", summary, start, end, evidence
    )


def _single(
    source: str,
    ids: list[int],
    flipped: set[int],
    when: dict[int, datetime],
    name: str,
    version: str,
) -> Finding:
    flips = len(flipped.intersection(ids))
    start, end = _window(ids, when)
    summary = (
        f"source {source}: {len(ids)} queries to {name}/{version} in {span_words(end - start)} are "
        f"near-duplicate variants of its own earlier queries, sent in a row, {flips} of them "
        "flipping the predicted class"
    )
    evidence = {
        "queries": len(ids),
        "flips": flips,
        "suspicious_score_ids": ids[-EVIDENCE_IDS:],
    }
    severity = "critical" if flips >= 3 else "high"
    return Finding("probing", source, name, version, severity, summary, start, end, evidence)
