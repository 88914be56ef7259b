"""The robustness score: one stable number per audit, 0 (no robustness) to 100.

    score = 100 × mean over the audited (norm, eps) points of
                  min over every attack and threat at that point of robust accuracy

i.e. the area under the worst-case robust-accuracy curve, normalised by the number of grid
points. Robust accuracy counts samples correct both clean and attacked, so the score also falls
with clean accuracy. It depends on the eps grid: compare scores of audits with the same
configuration (the gate does).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class _Cell(Protocol):
    norm: str
    eps: float
    robust_accuracy: float


def robustness_score(cells: Iterable[_Cell]) -> float | None:
    """The score of a set of result cells (None when there are none)."""
    worst: dict[tuple[str, float], float] = {}
    for cell in cells:
        key = (cell.norm, cell.eps)
        worst[key] = min(worst.get(key, 1.0), cell.robust_accuracy)
    if not worst:
        return None
    return round(100.0 * sum(worst.values()) / len(worst), 4)
