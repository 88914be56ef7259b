import math

import pytest

from monitor.alerts.stats import benjamini_hochberg, binomial_p_value


def test_binomial_tail_matches_the_closed_form() -> None:
    n, p = 12, 0.1
    for k in (0, 1, 3, 12):
        exact = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
        assert binomial_p_value(k, n, p) == pytest.approx(exact, rel=1e-12)


def test_benjamini_hochberg_on_a_textbook_example() -> None:
    p = [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216]
    assert benjamini_hochberg(p, 0.05) == [True, True] + [False] * 8
    assert benjamini_hochberg([0.01, 0.02, 0.03], 0.05) == [True, True, True]
    assert benjamini_hochberg([], 0.05) == []
