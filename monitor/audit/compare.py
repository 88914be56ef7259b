"""Two versions side by side: clean accuracy lost, robust accuracy gained per attack and eps,
training time — the trade-off of hardening, read from stored audits (nothing is recomputed).

Audits are matched on their configuration: the newest succeeded audit of each version with a
configuration both share; failing that, the newest of each (and the comparison says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from monitor.audit import store
from monitor.audit.store import AuditDetail
from monitor.db.models import Audit
from monitor.db.session import Database
from monitor.errors import NotFound
from monitor.registry import ModelVersionRef, Registry


@dataclass
class CellDelta:
    threat: str
    attack: str
    norm: str
    eps: float
    a: float | None
    b: float | None

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass
class Side:
    ref: ModelVersionRef
    audit: AuditDetail
    tags: dict[str, str]

    @property
    def training_seconds(self) -> float | None:
        value = self.tags.get("robustness.training_seconds")
        return float(value) if value else None

    @property
    def lineage(self) -> str:
        method = self.tags.get("robustness.method")
        if not method:
            return ""
        detail = self.tags.get("robustness.transforms") or (
            f"eps {self.tags.get('robustness.eps')}, {self.tags.get('robustness.epochs')} epochs"
        )
        return f"{method} ({detail}) from {self.tags.get('robustness.parent')}"


@dataclass
class Comparison:
    a: Side
    b: Side
    same_config: bool
    cells: list[CellDelta] = field(default_factory=list)

    @property
    def clean_delta(self) -> float | None:
        a, b = self.a.audit.clean_accuracy, self.b.audit.clean_accuracy
        return None if a is None or b is None else b - a


def compare(db: Database, registry: Registry, first: str, second: str) -> Comparison:
    """Compare the audits of two model versions (references as for every command)."""
    refs = [registry.resolve(first), registry.resolve(second)]
    ids = _matching_audits(db, refs)
    a, b = (
        Side(ref, store.get_audit(db, audit_id), registry.version_tags(ref))
        for ref, audit_id in zip(refs, ids[:2], strict=True)
    )
    comparison = Comparison(a, b, same_config=ids[2])
    rows_a, rows_b = a.audit.robust_by_cell(), b.audit.robust_by_cell()
    for key in sorted(set(rows_a) | set(rows_b), key=lambda k: (k[0], k[2], k[1], k[3])):
        comparison.cells.append(CellDelta(*key, rows_a.get(key), rows_b.get(key)))
    return comparison


def _matching_audits(db: Database, refs: list[ModelVersionRef]) -> tuple[int, int, bool]:
    """(audit id of each version, whether their configurations are the same)."""
    with db.session() as s:
        found = []
        for ref in refs:
            rows = s.execute(
                select(Audit.id, Audit.config_hash)
                .where(
                    Audit.model_name == ref.name,
                    Audit.model_version == ref.version,
                    Audit.status == "succeeded",
                )
                .order_by(Audit.id.desc())
            ).all()
            if not rows:
                raise NotFound(f"{ref} has no succeeded audit; run `robmon audit {ref.uri}`.")
            found.append(rows)
    hashes_b = {h: i for i, h in reversed(found[1])}
    for audit_id, config_hash in found[0]:  # newest first
        if config_hash in hashes_b:
            return audit_id, hashes_b[config_hash], True
    return found[0][0][0], found[1][0][0], False
