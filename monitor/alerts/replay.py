"""Replay a simulated stream (``monitor.simulate.Traffic``) through the ingester and the alert
rules, and say what they caught: the tests and ``benchmarks/alerts.py`` judge the rules with it.

Two modes, which must raise the same incidents: ``batch`` ingests everything, then evaluates
once (``robmon ingest log && robmon alerts evaluate``); ``streaming`` ingests ``chunk`` records
at a time with an evaluation after each (``robmon serve``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.alerts.evaluate import Evaluator
from monitor.alerts.queries import get_alert, list_alerts
from monitor.alerts.settings import AlertSettings
from monitor.config import Settings
from monitor.db.session import Database
from monitor.ingest.pipeline import Ingester
from monitor.ingest.sources import RawLine
from monitor.registry import Registry
from monitor.simulate import Traffic


@dataclass
class Outcome:
    """What the rules made of one stream in one mode."""

    mode: str
    attackers: dict[str, str]  # address -> attacker kind
    benign: set[str]
    named: set[str] = field(default_factory=set)  # every address an incident names
    pairs: set[tuple[str, str]] = field(default_factory=set)  # (rule, address) of every finding
    rules: dict[str, set[str]] = field(default_factory=dict)  # address -> rules naming it
    first: dict[str, int] = field(default_factory=dict)  # kind -> its records before an incident
    incidents: int = 0
    evaluations: int = 0

    @property
    def kinds(self) -> list[str]:
        return sorted(set(self.attackers.values()))

    def caught(self) -> list[str]:
        """Attacker kinds with at least one address named by an incident."""
        return sorted({self.attackers[a] for a in self.named if a in self.attackers})

    def missed(self) -> list[str]:
        return sorted(set(self.kinds) - set(self.caught()))

    def benign_alerted(self) -> list[str]:
        return sorted(self.named & self.benign)

    def named_of(self, kind: str) -> tuple[int, int]:
        """(addresses of ``kind`` named, addresses of ``kind``)."""
        addresses = [a for a, k in self.attackers.items() if k == kind]
        return sum(a in self.named for a in addresses), len(addresses)


def replay(
    traffic: Traffic,
    db: Database,
    registry: Registry,
    settings: Settings,
    mode: str,
    chunk: int = 100,
) -> Outcome:
    """Ingest and evaluate ``traffic`` into an empty store (its models registered and
    calibrated), in ``batch`` or ``streaming`` mode."""
    if mode not in ("batch", "streaming"):
        raise ValueError(f"mode is batch or streaming, not {mode!r}")
    ingester = Ingester(db, registry, settings, batch_size=128)
    evaluator = Evaluator(db, AlertSettings.from_settings(settings), f"replay-{mode}")
    outcome = Outcome(mode, traffic.attacker_addresses(), traffic.benign_addresses())
    lines = traffic.lines()
    size = chunk if mode == "streaming" else len(lines)
    sent: dict[str, int] = {}
    for start in range(0, len(lines), size):
        part = lines[start : start + size]
        raw = [
            RawLine("replay", start + i + 1, 0, 0, line.encode(), len(line))
            for i, line in enumerate(part)
        ]
        ingester.process(raw, None)
        for record in traffic.records[start : start + size]:
            kind = outcome.attackers.get(record["source"], "benign")
            sent[kind] = sent.get(kind, 0) + 1
        evaluator.evaluate()
        outcome.evaluations += 1
        _collect(db, outcome, sent)
    return outcome


def _collect(db: Database, outcome: Outcome, sent: dict[str, int]) -> None:
    incidents = list_alerts(db, limit=100_000)
    outcome.incidents = len(incidents)
    for incident in incidents:
        detail = get_alert(db, incident.id)
        for address in detail.evidence.get("sources") or [incident.source]:
            outcome.named.add(address)
            kind = outcome.attackers.get(address)
            if kind is not None and kind not in outcome.first:
                outcome.first[kind] = sent.get(kind, 0)
        for finding in detail.evidence.get("rules", {}).values():
            for address in finding.get("sources") or [incident.source]:
                outcome.pairs.add((finding["rule"], address))
                outcome.rules.setdefault(address, set()).add(finding["rule"])
