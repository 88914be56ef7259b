"""Budgets spent in stages: which configurations the stages of one attack run with, and one
result for them all (``measure.measure_staged`` runs them, each on what the last left robust).

Square: ``query_probe`` queries, then fresh searches of twice as many each, up to its budget;
the next only while the one before fooled any sample. APGD-T: the first ``target_stop``
targets, then all the others at once on ``target_screen`` steps each (a screen, run whatever
the first stage found), or without a screen one target at a time while the one before fooled
any.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from monitor.audit.config import QUERY_ATTACKS, AuditConfig

if TYPE_CHECKING:
    from monitor.audit.measure import CellResult


@dataclass(frozen=True)
class Stage:
    """One stage: its configuration, the APGD-T targets it skips (run by the stages before),
    and whether it runs whatever the stage before found (a screen) or only if that fooled any."""

    config: AuditConfig
    skip: int = 0
    always: bool = False


def stage_plan(attack: str, config: AuditConfig) -> list[Stage]:
    """The stages of an attack (one stage: no staging)."""
    if attack in QUERY_ATTACKS and 0 < config.query_probe < config.queries:
        budgets, left = [], config.queries  # the probe, then doubling: 500, 1000, 2000, 1500
        while left > 0:
            budgets.append(min(config.query_probe * 2 ** len(budgets), left))
            left -= budgets[-1]
        return [
            Stage(replace(config, queries=q, seed=config.seed + i)) for i, q in enumerate(budgets)
        ]
    stop = config.target_stop
    if attack == "apgd-t" and 0 < stop < config.target_classes:
        first = Stage(replace(config, target_classes=stop))
        if config.target_screen:  # all the other targets at once, each on a short budget
            return [first, Stage(replace(config, apgd_steps=config.target_screen), stop, True)]
        return [first] + [
            Stage(replace(config, target_classes=k + 1), k)
            for k in range(stop, config.target_classes)
        ]
    return [Stage(config)]


def merge_stages(
    cells: list[CellResult], correct: torch.Tensor, config: AuditConfig, gallery: int
) -> CellResult:
    """One result for the stages of one attack: the last stage's robustness, the sums of
    time, passes and queries, the perturbations of every stage's successes."""
    if len(cells) == 1 and not cells[0].queries:
        return replace(cells[0], steps=config.steps_of(cells[0].attack))
    n = int(correct.sum())
    last = cells[-1]
    fooled = [c.attacked - int(c.robust.sum()) for c in cells]
    sizes = [(c, k) for c, k in zip(cells, fooled, strict=True) if k]
    counts = None
    if cells[0].query_counts is not None:
        counts = torch.stack([c.query_counts for c in cells]).sum(dim=0)
    return replace(
        last,
        steps=config.steps_of(last.attack),
        attack_success_rate=1.0 - int(last.robust.sum()) / n if n else None,
        seconds=sum(c.seconds for c in cells),
        passes=sum(c.passes for c in cells),
        examples=[e for c in cells for e in c.examples][:gallery],
        attacked=n,
        mean_perturbation=sum(c.mean_perturbation * k for c, k in sizes) / sum(fooled)
        if sizes
        else None,
        max_perturbation=max(c.max_perturbation for c, _ in sizes) if sizes else None,
        queries=query_summary(counts[correct], config.queries) if counts is not None else None,
        query_counts=counts,
    )


def query_summary(used: torch.Tensor, budget: int) -> dict | None:
    """Queries per attacked sample: mean, median, max and the budget."""
    if not len(used):
        return None
    q = used.double()
    return {
        "mean": float(q.mean()),
        "median": float(q.median()),
        "max": int(q.max()),
        "budget": budget,
    }
