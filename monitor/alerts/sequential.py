"""Per-source sequential rate tests: pace-free, chunk-free evidence that a source's inputs are
flagged more often than benign traffic is.

For each source (and model version) and each flag (``flagged``, ``strong_suspicious``,
``low_confidence``), the inputs are read one by one in arrival order as a 0/1 sequence and
tested against the benign rate ``p0`` (the calibration's worst benign group, times the safety
factor) with a CUSUM of the binomial log-likelihood ratio for a few alternative rates
``q = r × p0``::

    S_t = max(0, S_{t-1} + x_t log(q / p0) + (1 - x_t) log((1 - q) / (1 - p0)))

The CUSUM is the best window ending at the current input, over every window length: it needs no
window in minutes and no minimum count, so a source sending one input every five minutes is
tested exactly as one sending fifty in a minute, and a backlog ingested at once gives the same
statistics as the same records ingested in chunks.

Significance (anytime-valid, Ville's inequality): for the window starting at the source's j-th
input the likelihood ratio is a test martingale under the benign rate, so with weights
1/(j(j+1)) over start points and a union over the K tested (flag, q) pairs::

    p = K · j(j+1) · exp(-S)

bounds the chance that a benign source ever shows such a window, whenever it is looked at.
Sources are then tested together with the Benjamini–Hochberg procedure (``monitor.alerts.rules``).
A gap of more than ``horizon`` of record time between two inputs of a source starts its tests
afresh.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np

RULE_TIERS = {
    "flagged-rate": ("flagged", "strong_suspicious"),
    "low-confidence": ("low_confidence",),
}
RATIOS = (2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
MAX_Q = 0.95
LEAST_RATE = {"strong_suspicious": 0.001}
DEFAULT_LEAST_RATE = 0.005


@dataclass
class Observation:
    """One scored input, as the sequential tests read it."""

    score_id: int
    ts: datetime
    flags: dict[str, bool]


@dataclass
class Evidence:
    """The most significant window of one rule for one source so far."""

    rule: str
    tier: str
    p_value: float
    statistic: float
    q: float
    p0: float
    n: int
    k: int
    start_index: int
    start: datetime
    end: datetime
    end_id: int

    def to_json(self) -> dict[str, Any]:
        return {
            **{k: v for k, v in self.__dict__.items() if k not in ("start", "end")},
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> Evidence:
        values = dict(data)
        values["start"] = datetime.fromisoformat(values["start"])
        values["end"] = datetime.fromisoformat(values["end"])
        return Evidence(**values)


def benign_rate(baseline: dict[str, float], tier: str, factor: float) -> float | None:
    """The rate a benign source may show for ``tier``: the worst benign group's rate at
    calibration (never below a floor), times the safety factor; None when not calibrated."""
    if tier not in baseline:
        return None
    worst = max(baseline[tier], baseline.get(f"{tier}_worst", baseline[tier]))
    return min(0.5, max(worst, LEAST_RATE.get(tier, DEFAULT_LEAST_RATE)) * factor)


def alternatives(p0: float) -> list[float]:
    return [r * p0 for r in RATIOS if r * p0 < MAX_Q] or [min(MAX_Q, (1 + p0) / 2)]


@dataclass
class SourceTests:
    """The sequential tests of one (source, model, version); JSON-serialisable between
    evaluations in ``source_activity.sequential``."""

    count: int = 0
    last_ts: datetime | None = None
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @staticmethod
    def load(data: dict[str, Any] | None) -> SourceTests:
        if not data:
            return SourceTests()
        return SourceTests(
            count=int(data["count"]),
            last_ts=datetime.fromisoformat(data["last_ts"]) if data.get("last_ts") else None,
            tiers=data.get("tiers", {}),
        )

    def dump(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "last_ts": self.last_ts.isoformat() if self.last_ts else None,
            "tiers": self.tiers,
        }

    def update(
        self, observations: list[Observation], rates: dict[str, float], horizon: timedelta
    ) -> dict[str, Evidence]:
        """Feed new inputs (arrival order); per rule, the most significant window that ended
        at one of them."""
        found: dict[str, Evidence] = {}
        start = 0
        for i, obs in enumerate(observations):
            if self.last_ts is not None and obs.ts - self.last_ts > horizon and i > start:
                _keep_best(found, self._run(observations[start:i], rates))
                start = i
            if self.last_ts is not None and obs.ts - self.last_ts > horizon:
                self.tiers = {}  # a long silence: what came before says nothing about now
            self.last_ts = obs.ts if self.last_ts is None else max(self.last_ts, obs.ts)
        _keep_best(found, self._run(observations[start:], rates))
        return found

    def _run(self, observations: list[Observation], rates: dict[str, float]) -> dict[str, Evidence]:
        found: dict[str, Evidence] = {}
        if not observations:
            return found
        offset = self.count
        self.count += len(observations)
        for rule, tiers in RULE_TIERS.items():
            tested = [t for t in tiers if t in rates]
            k_tests = sum(len(alternatives(rates[t])) for t in tested)
            for tier in tested:
                x = np.array([o.flags.get(tier, False) for o in observations], dtype=float)
                candidate = self._tier(tier, rule, x, rates[tier], offset, observations, k_tests)
                if candidate is not None:
                    _keep_best(found, {rule: candidate})
        return found

    def _tier(
        self,
        tier: str,
        rule: str,
        x: np.ndarray,
        p0: float,
        offset: int,
        observations: list[Observation],
        k_tests: int,
    ) -> Evidence | None:
        """Advance one flag's CUSUMs over ``x``; the most significant window seen on the way."""
        qs = np.array(alternatives(p0))
        state = self.tiers.get(tier)
        if state is None or not math.isclose(state["p0"], p0) or len(state["s"]) != len(qs):
            state = {
                "p0": p0,
                "s": [0.0] * len(qs),
                "start": [offset] * len(qs),
                "start_ts": [observations[0].ts.isoformat()] * len(qs),
                "n": [0] * len(qs),
                "k": [0] * len(qs),
            }
        up, down = np.log(qs / p0), np.log((1 - qs) / (1 - p0))
        steps = x[None, :] * up[:, None] + (1 - x[None, :]) * down[:, None]  # (alts, m)
        m = len(x)
        s = np.array(state["s"])
        # Lindley: S_t = C_t - min(0, min_{i<=t} C_i) with C_0 = S_0
        c = s[:, None] + np.cumsum(steps, axis=1)
        running_min = np.minimum.accumulate(np.minimum(c, 0.0), axis=1)
        stat = c - running_min
        # where the current window started: after the last time C reached its running minimum
        at_min = (c <= running_min + 1e-12) & (running_min < 0)
        reset_at = np.where(at_min, np.arange(m)[None, :], -1)
        last_reset = np.maximum.accumulate(reset_at, axis=1)  # -1: the window began earlier
        flags_before = np.concatenate([[0.0], np.cumsum(x)])
        best_evidence = None
        for a in range(len(qs)):
            for t in _candidates(stat[a]):
                r = int(last_reset[a, t])
                if r >= 0:
                    start_index, n = offset + r + 2, t - r
                    k = int(flags_before[t + 1] - flags_before[r + 1])
                    start_ts = observations[r + 1].ts if r + 1 < m else observations[t].ts
                else:
                    start_index = state["start"][a] + 1
                    n = state["n"][a] + t + 1
                    k = state["k"][a] + int(flags_before[t + 1])
                    start_ts = datetime.fromisoformat(state["start_ts"][a])
                value = float(stat[a, t])
                if n <= 0 or value <= 0:
                    continue
                p = min(1.0, k_tests * start_index * (start_index + 1) * math.exp(-value))
                if best_evidence is None or p < best_evidence.p_value:
                    best_evidence = Evidence(
                        rule,
                        tier,
                        p,
                        value,
                        float(qs[a]),
                        p0,
                        n,
                        k,
                        start_index,
                        start_ts,
                        observations[t].ts,
                        observations[t].score_id,
                    )
            r = int(last_reset[a, -1])
            if r >= 0:
                state["start"][a] = offset + r + 1
                state["start_ts"][a] = (
                    observations[r + 1].ts.isoformat()
                    if r + 1 < m
                    else observations[-1].ts.isoformat()
                )
                state["n"][a] = m - 1 - r
                state["k"][a] = int(flags_before[m] - flags_before[r + 1])
            else:
                state["n"][a] += m
                state["k"][a] += int(flags_before[m])
            state["s"][a] = float(stat[a, -1])
            if state["s"][a] == 0.0:
                state["start"][a] = offset + m
                state["start_ts"][a] = observations[-1].ts.isoformat()
                state["n"][a], state["k"][a] = 0, 0
        self.tiers[tier] = state
        return best_evidence


def _keep_best(found: dict[str, Evidence], new: dict[str, Evidence]) -> None:
    for rule, evidence in new.items():
        if rule not in found or evidence.p_value < found[rule].p_value:
            found[rule] = evidence


def _candidates(stat: np.ndarray) -> list[int]:
    """Where a window could be most significant: the peaks of the statistic (its maximum, and
    the last point of every rise), few enough to score one by one."""
    if not len(stat):
        return []
    peaks = np.flatnonzero(np.diff(stat, append=-np.inf) < 0)
    top = int(np.argmax(stat))
    if len(peaks) > 32:
        peaks = peaks[np.argsort(stat[peaks])[-32:]]
    return sorted({top, *peaks.tolist()})
