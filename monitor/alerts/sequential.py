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

import functools
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


@functools.lru_cache(maxsize=1024)
def alternatives(p0: float) -> tuple[float, ...]:
    """The alternative rates tested against ``p0`` (each costs a share of the significance)."""
    low = 1.5 * p0
    if low >= MAX_Q:
        return ((1 + p0) / 2,)
    count = min(MAX_ALTERNATIVES, max(2, math.ceil(math.log(MAX_Q / low) / math.log(1.6)) + 1))
    ratio = (MAX_Q / low) ** (1 / (count - 1))
    return tuple(low * ratio**i for i in range(count))


@functools.lru_cache(maxsize=1024)
def _log_ratios(p0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alternatives, log-LR of a flagged input, log-LR of an unflagged one) against ``p0``."""
    qs = np.array(alternatives(p0))
    return qs, np.log(qs / p0), np.log((1 - qs) / (1 - p0))


@dataclass
class SourceTests:
    """The sequential tests of one (source, model, version); JSON-serialisable between
    evaluations in ``source_activity.sequential``."""

    count: int = 0
    last_ts: datetime | None = None
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    best: dict[str, Evidence] = field(default_factory=dict)  # per rule, within the horizon
    reported: set[str] = field(default_factory=set)  # rules whose best evidence was reported
    best_changed: bool = False

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
                self.best_changed = True

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
                x = [bool(o.flags.get(tier, False)) for o in observations]
                candidate = self._tier(tier, rule, x, rates[tier], offset, observations, k_tests)
                if candidate is not None:
                    _keep_best(found, {rule: candidate})
        return found

    def _tier(
        self,
        tier: str,
        rule: str,
        x: list[bool],
        p0: float,
        offset: int,
        observations: list[Observation],
        k_tests: int,
    ) -> Evidence | None:
        """Advance one flag's tests over ``x``; the most significant window seen on the way.

        Two windows per alternative end at each input: the CUSUM's (the best start; it restarts
        after the input where the statistic falls to 0) and the one from the first input of the
        run (``origin``: cheaper in significance when the attack began at once)."""
        qs, up, down = _log_ratios(p0)
        state = self.tiers.get(tier)
        if state is None or not math.isclose(state["p0"], p0) or len(state["s"]) != len(qs):
            state = _fresh_state(p0, len(qs), offset, observations[0].ts)
        s, c, n, k = state["s"], state["c"], state["n"], state["k"]
        start, start_ts = state["start"], state["start_ts"]
        log_k, best, best_log_p = math.log(k_tests), None, 0.0
        for t, (flag, obs) in enumerate(zip(x, observations, strict=True)):
            state["n0"] += 1
            state["k0"] += flag
            origin = state["origin"] + 1
            for a in range(len(qs)):
                step = up[a] if flag else down[a]
                c[a] += step
                if start_ts[a] is None:
                    start_ts[a] = obs.ts.isoformat()
                if s[a] + step <= 0.0:  # the window restarts after this input
                    s[a], n[a], k[a], start[a], start_ts[a] = 0.0, 0, 0, offset + t + 1, None
                    continue
                s[a] += step
                n[a] += 1
                k[a] += flag
                j = start[a] + 1
                for log_p, window in (
                    (log_k + math.log(j * (j + 1.0)) - s[a], (s[a], j, n[a], k[a], start_ts[a])),
                    (
                        log_k + math.log(origin * (origin + 1.0)) - c[a],
                        (c[a], origin, state["n0"], state["k0"], state["origin_ts"]),
                    ),
                ):
                    if log_p < best_log_p:
                        best_log_p, best = log_p, (window, float(qs[a]), obs)
        self.tiers[tier] = state
        if best is None:
            return None
        (statistic, first, count, hits, first_ts), q, last = best
        return Evidence(
            rule,
            tier,
            math.exp(best_log_p),
            float(statistic),
            q,
            p0,
            int(count),
            int(hits),
            int(first),
            datetime.fromisoformat(first_ts),
            last.ts,
            last.score_id,
        )


def _fresh_state(p0: float, alternatives: int, offset: int, ts: datetime) -> dict[str, Any]:
    """A tier's tests before any input: per alternative the CUSUM (``s``; its window's first
    input ``start`` (0-based), time, inputs ``n`` and flags ``k``) and the sum since the run's
    first input (``c``; ``origin`` (0-based), ``origin_ts``, ``n0``, ``k0``)."""
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


def _keep_best(found: dict[str, Evidence], new: dict[str, Evidence]) -> None:
    for rule, evidence in new.items():
        if rule not in found or evidence.p_value < found[rule].p_value:
            found[rule] = evidence
