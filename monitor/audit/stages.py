"""Budgets spent in stages: which configurations the stages of one attack run with, running
them (``measure_staged``: each a cell on what the last left robust), and one result for them
all.

Square: ``query_probe`` queries, then fresh searches of twice as many each, up to its budget;
APGD-T: the first ``target_stop`` targets, then one target at a time. The next stage runs only
while the one before fooled any sample.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from monitor.audit.config import QUERY_ATTACKS, AuditConfig
from monitor.audit.memory import BatchPlan
from monitor.classifiers import Classifier
from monitor.progress import Reporter, silent

if TYPE_CHECKING:
    from monitor.audit.measure import CellResult


def stage_plan(attack: str, config: AuditConfig) -> list[tuple[AuditConfig, int]]:
    """(configuration, targets to skip) of each stage of an attack (one stage: no staging)."""
    if attack in QUERY_ATTACKS and 0 < config.query_probe < config.queries:
        budgets, left = [], config.queries  # the probe, then doubling: 500, 1000, 2000, 1500
        while left > 0:
            budgets.append(min(config.query_probe * 2 ** len(budgets), left))
            left -= budgets[-1]
        return [
            (replace(config, queries=q, seed=config.seed + i), 0) for i, q in enumerate(budgets)
        ]
    if attack == "apgd-t" and 0 < config.target_stop < config.target_classes:
        first = [(replace(config, target_classes=config.target_stop), 0)]
        return first + [
            (replace(config, target_classes=k + 1), k)
            for k in range(config.target_stop, config.target_classes)
        ]
    return [(config, 0)]


def measure_staged(
    crafter: Classifier,
    target: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    attack: str,
    norm: str,
    eps: float,
    config: AuditConfig,
    threat: str,
    batch: BatchPlan | int,
    report: Reporter = silent,
    previous: torch.Tensor | None = None,
) -> CellResult:
    """An attack whose budget is spent in stages (``stage_plan``), each a cell
    (``measure.measure_cell``) on the samples still robust, from the same ``previous``, going on
    only while the stage before fooled any. Where the earlier attacks left nothing to find,
    the rest of the budget is not spent; where they missed something (masked gradients), all
    of it is. Decided over the whole cell, so the numbers do not depend on the batch size."""
    from monitor.audit.measure import GALLERY_SIZE, measure_cell  # measure runs the stages

    left, done = correct, []
    for stage_config, skip in stage_plan(attack, config):
        cell = measure_cell(crafter, target, x, y, left, attack, norm, eps, stage_config,
                            threat, batch, report, skip=skip, previous=previous)  # fmt: skip
        done.append(cell)
        fooled_any = int(cell.robust.sum()) < int(left.sum())
        left = cell.robust
        if not fooled_any:
            break
    return merge_stages(done, correct, config, GALLERY_SIZE)


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
