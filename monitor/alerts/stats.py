"""The statistics behind the rate rules."""

from __future__ import annotations

from collections.abc import Sequence


def binomial_p_value(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how surprising k flagged of n is at rate p.

    Exactly the regularized incomplete beta I_p(k, n - k + 1) (scipy.special imports in a
    fraction of scipy.stats' time).
    """
    from scipy.special import betainc

    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return float(betainc(k, n - k + 1, p))


def benjamini_hochberg(p_values: Sequence[float], q: float) -> list[bool]:
    """Which hypotheses to reject with the false discovery rate controlled at ``q``."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    cutoff = -1
    for rank, i in enumerate(order, start=1):
        if p_values[i] <= q * rank / m:
            cutoff = rank
    rejected = [False] * m
    for rank, i in enumerate(order, start=1):
        rejected[i] = rank <= cutoff
    return rejected


def format_p(p: float) -> str:
    if p == 0.0:
        return "p < 1e-300"
    if p < 0.001:
        return f"p = {p:.0e}"
    return f"p = {p:.3f}"
