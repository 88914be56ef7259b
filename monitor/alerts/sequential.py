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
    "flagged-rate": ("combined_suspicious", "flagged", "strong_suspicious"),
    "low-confidence": ("low_confidence",),
}
MAX_Q = 0.9  # alternative rates: geometric from 1.5 × p0 to MAX_Q, ratio at least 1.6, at most 4
MAX_ALTERNATIVES = 4
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


def tested_rates(baseline: dict[str, float], factor: float) -> dict[str, float]:
    """The benign rate of every flag tested for a calibration. With a combined detector its
    flag replaces ``flagged`` (squeezing or combined): a blurry camera moves squeezed
    predictions by itself, and the combined detector has learnt how much that means."""
    tiers = [t for tiers in RULE_TIERS.values() for t in tiers]
    if "combined_suspicious" in baseline:
        tiers.remove("flagged")
    rates = {t: benign_rate(baseline, t, factor) for t in tiers}
    return {t: r for t, r in rates.items() if r is not None}


def benign_rate(baseline: dict[str, float], tier: str, factor: float) -> float | None:
    """The rate a benign source may show for ``tier``, times the safety factor (None when not
    calibrated): the worst benign group's rate on held-out calibration data (a blurrier camera
    is not an attack), never below a floor."""
    if tier not in baseline:
        return None
    rate = max(baseline[tier], baseline.get(f"{tier}_worst", baseline[tier]))
    return min(0.5, max(rate, LEAST_RATE.get(tier, DEFAULT_LEAST_RATE)) * factor)


def alternatives(p0: float) -> list[float]:
    """The alternative rates tested against ``p0`` (each costs a share of the significance)."""
    low = 1.5 * p0
    if low >= MAX_Q:
        return [(1 + p0) / 2]
    count = min(MAX_ALTERNATIVES, max(2, math.ceil(math.log(MAX_Q / low) / math.log(1.6)) + 1))
    return np.geomspace(low, MAX_Q, count).tolist()


@dataclass
class SourceTests:
    """The sequential tests of one (source, model, version); JSON-serialisable between
    evaluations in ``source_activity.sequential``."""

    count: int = 0
    last_ts: datetime | None = None
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    best: dict[str, Evidence] = field(default_factory=dict)  # per rule, within the horizon
    reported: set[str] = field(default_factory=set)  # rules whose best evidence was reported

    @staticmethod
    def load(data: dict[str, Any] | None, best: dict[str, Any] | None) -> SourceTests:
        tests = SourceTests()
        if data:
            tests.count = int(data["count"])
            tests.last_ts = datetime.fromisoformat(data["last_ts"]) if data.get("last_ts") else None
            tests.tiers = data.get("tiers", {})
        for rule, e in (best or {}).items():
            e = dict(e)
            if e.pop("reported", False):
                tests.reported.add(rule)
            tests.best[rule] = Evidence.from_json(e)
        return tests

    def dump(self) -> dict[str, Any]:
        """The columns ``sequential``, ``best`` and ``best_p`` of ``source_activity``."""
        return {
            "sequential": {
                "count": self.count,
                "last_ts": self.last_ts.isoformat() if self.last_ts else None,
                "tiers": self.tiers,
            },
            "best": self.best_json(),
            "best_p": min((e.p_value for e in self.best.values()), default=None),
        }

    def best_json(self) -> dict[str, Any]:
        return {r: {**e.to_json(), "reported": r in self.reported} for r, e in self.best.items()}

    def keep(self, found: dict[str, Evidence], horizon: timedelta) -> None:
        """Keep each rule's most significant evidence (newer evidence replaces evidence that
        ended more than the horizon before it)."""
        for rule, e in found.items():
            old = self.best.get(rule)
            if old is None or e.p_value < old.p_value or old.end < e.end - horizon:
                self.best[rule] = e
                self.reported.discard(rule)

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
        self.keep(found, horizon)
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
        """Advance one flag's tests over ``x``; the most significant window seen on the way.

        Two windows per alternative end at each input: the CUSUM's (the best start) and the one
        from the first input of the run (``origin``: cheaper in significance when the attack
        began at once)."""
        qs = np.array(alternatives(p0))
        state = self.tiers.get(tier)
        if state is None or not math.isclose(state["p0"], p0) or len(state["s"]) != len(qs):
            state = _fresh_state(p0, len(qs), offset, observations[0].ts)
        up, down = np.log(qs / p0), np.log((1 - qs) / (1 - p0))
        steps = x[None, :] * up[:, None] + (1 - x[None, :]) * down[:, None]  # (alts, m)
        m = len(x)
        flags_before = np.concatenate([[0.0], np.cumsum(x)])
        # Lindley: S_t = C_t - min(0, min_{i<=t} C_i) with C_0 = S_0
        c = np.array(state["s"])[:, None] + np.cumsum(steps, axis=1)
        running_min = np.minimum.accumulate(np.minimum(c, 0.0), axis=1)
        stat = c - running_min
        # the CUSUM window starts after the last time C reached its running minimum (-1: earlier)
        at_min = (c <= running_min + 1e-12) & (running_min < 0)
        last_reset = np.maximum.accumulate(np.where(at_min, np.arange(m)[None, :], -1), axis=1)
        start_index = np.where(
            last_reset >= 0, offset + last_reset + 2, np.array(state["start"])[:, None] + 1
        )
        whole = np.array(state["c"])[:, None] + np.cumsum(steps, axis=1)
        origin = state["origin"] + 1
        log_k = math.log(k_tests)
        log_p = np.stack(
            [
                log_k + np.log(start_index * (start_index + 1.0)) - stat,
                np.full(stat.shape, log_k + math.log(origin * (origin + 1.0))) - whole,
            ]
        )
        which, a, t = np.unravel_index(int(np.argmin(log_p)), log_p.shape)
        evidence = None
        if log_p[which, a, t] < 0:
            if which == 1:
                window = (origin, state["n0"] + t + 1, state["k0"] + flags_before[t + 1])
                start_ts = datetime.fromisoformat(state["origin_ts"])
            elif last_reset[a, t] >= 0:
                r = int(last_reset[a, t])
                window = (offset + r + 2, t - r, flags_before[t + 1] - flags_before[r + 1])
                start_ts = observations[min(r + 1, t)].ts
            else:
                window = (
                    state["start"][a] + 1,
                    state["n"][a] + t + 1,
                    state["k"][a] + flags_before[t + 1],
                )
                start_ts = datetime.fromisoformat(state["start_ts"][a])
            evidence = Evidence(
                rule,
                tier,
                float(math.exp(log_p[which, a, t])),
                float((stat, whole)[which][a, t]),
                float(qs[a]),
                p0,
                int(window[1]),
                int(window[2]),
                int(window[0]),
                start_ts,
                observations[t].ts,
                observations[t].score_id,
            )
        _advance(state, stat, whole, last_reset, flags_before, offset, observations)
        self.tiers[tier] = state
        return evidence


def _fresh_state(p0: float, alternatives: int, offset: int, ts: datetime) -> dict[str, Any]:
    """A tier's tests before any input: per alternative the CUSUM (``s``, its window's first
    input ``start`` - 1, time, inputs ``n`` and flags ``k``) and the sum since the run's first
    input (``c``; ``origin`` - 1, ``origin_ts``, ``n0``, ``k0``)."""
    return {
        "p0": p0,
        "s": [0.0] * alternatives,
        "start": [offset] * alternatives,
        "start_ts": [ts.isoformat()] * alternatives,
        "n": [0] * alternatives,
        "k": [0] * alternatives,
        "c": [0.0] * alternatives,
        "origin": offset,
        "origin_ts": ts.isoformat(),
        "n0": 0,
        "k0": 0,
    }


def _advance(
    state: dict[str, Any],
    stat: np.ndarray,
    whole: np.ndarray,
    last_reset: np.ndarray,
    flags_before: np.ndarray,
    offset: int,
    observations: list[Observation],
) -> None:
    """Carry a tier's state to the end of this run of inputs."""
    m = stat.shape[1]
    for a in range(stat.shape[0]):
        r = int(last_reset[a, -1])
        if stat[a, -1] <= 0.0:
            r = m - 1
        if r >= 0:
            state["start"][a] = offset + r + 1
            state["start_ts"][a] = observations[min(r + 1, m - 1)].ts.isoformat()
            state["n"][a] = m - 1 - r
            state["k"][a] = int(flags_before[m] - flags_before[r + 1])
        else:
            state["n"][a] += m
            state["k"][a] += int(flags_before[m])
        state["s"][a] = max(0.0, float(stat[a, -1]))
        state["c"][a] = float(whole[a, -1])
    state["n0"] += m
    state["k0"] += int(flags_before[m])


def _keep_best(found: dict[str, Evidence], new: dict[str, Evidence]) -> None:
    for rule, evidence in new.items():
        if rule not in found or evidence.p_value < found[rule].p_value:
            found[rule] = evidence
