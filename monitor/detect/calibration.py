"""Detector calibration: choose squeezers, set thresholds at a target false-positive rate, and
measure detection on held-out adversarial inputs.

The paper's fixed squeezer recipe does not carry over to every model (on the 8×8 digits CNN a
2×2 median alone costs a third of the clean accuracy), so squeezers are chosen per model version:
candidates that keep clean accuracy within ``accuracy_margin`` are added greedily while they
raise the ROC AUC of clean-versus-adversarial separation. Benign corruptions (noise, blur, JPEG,
brightness, palette, resizing) join the clean side, so a blurrier camera is not an attack.
Everything is chosen on one half of the data (split A) and reported on the other (split B).

The data is read a batch at a time and only per-input scores are kept, so memory does not grow
with the dataset. A calibration where no attack succeeds (a robust model, a tiny eps) still
finishes: thresholds come from the benign side and detection is reported as 0 of 0.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from monitor.detect.corruptions import benign_corruptions
from monitor.detect.scores import (
    BASE_FEATURES,
    ProbabilityFn,
    ScoreBatch,
    as_float,
    roc_auc,
    score_inputs,
)
from monitor.detect.squeezers import Squeezer, candidates_for, default_squeezers, parse_squeezer
from monitor.detect.thresholds import CombinedDetector, Thresholds, feature_value

DETECTORS = ("confidence", "squeezing", "combined")
STRONG_QUANTILE = 0.999
MIN_GAIN = 0.005  # joint ROC AUC a squeezer must add per forward pass it costs
OUT_OF_FOLD = 5  # folds for the combined detector's thresholds
FPR_MARGIN = 1.0  # thresholds keep each benign rate this many standard errors under the target
# (x, y, attack name) -> adversarial x, crafted by whoever can (white-box or a surrogate)
Crafter = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]


# -- calibration -----------------------------------------------------------------------------


@dataclass
class CandidateReport:
    squeezer: str
    clean_accuracy: float
    roc_auc: float
    kept: bool
    reason: str
    cost: float = 1.0  # model forward passes per input (the squeezed input's pass included)


@dataclass
class DetectionReport:
    """Held-out (split B) performance of one detector."""

    detector: str
    detection_rate: dict[str, float]  # per attack, on successful adversarial inputs
    roc_auc: dict[str, float]
    fpr_clean: float
    fpr_benign: dict[str, float]
    detected: dict[str, list[int]] = field(default_factory=dict)  # attack: [flagged, of]
    by_eps: dict[str, float] = field(default_factory=dict)  # eps: rate over its attacks


@dataclass
class Calibration:
    thresholds: Thresholds
    detectors: list[DetectionReport]
    candidates: list[CandidateReport]
    best_detector: str
    clean_accuracy: float
    n_calibration: int
    n_evaluation: int
    n_adversarial: dict[str, int]
    eps: float
    reason: str
    baseline: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def report(self) -> dict[str, Any]:
        data = asdict(self)
        data["thresholds"] = self.thresholds.to_dict()
        return data


def stratified_halves(y: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Index sets A and B, half of every class each (deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    a, b = [], []
    for label in torch.unique(y):
        idx = (y == label).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        half = (len(idx) + 1) // 2
        a.append(idx[:half])
        b.append(idx[half:])
    return torch.cat(a).sort().values, torch.cat(b).sort().values


@dataclass
class _Split:
    """Per-input scores of one split (never the images: memory does not grow with them)."""

    clean: ScoreBatch
    benign: dict[str, ScoreBatch]
    adversarial: dict[str, ScoreBatch]
    labels: torch.Tensor  # of the clean inputs

    @property
    def correct(self) -> torch.Tensor:
        return self.clean.predicted == self.labels

    def negatives(self) -> ScoreBatch:
        return ScoreBatch.concat([self.clean, *self.benign.values()])

    def groups(self) -> list[ScoreBatch]:
        """Clean inputs and each benign corruption: thresholds hold the FPR in every group."""
        return [self.clean, *self.benign.values()]

    def positives(self) -> ScoreBatch:
        return ScoreBatch.concat(list(self.adversarial.values()))


@contextlib.contextmanager
def steady_heap() -> Iterator[None]:
    """While calibrating, ask glibc to serve every allocation above 128 KiB with its own
    mapping, returned to the system when freed. By default glibc raises that threshold after
    the first large frees and then carves batch-sized tensors out of its heap, which fragments:
    calibrating a 224×224 model on 300 images peaked at 2.35 GB that way, 1.26 GB with the
    fixed threshold. Afterwards the threshold goes to 32 MiB (where glibc's own adjustment
    ends), so that scoring in the same process reuses its heap instead of mapping fresh,
    zeroed pages for every tensor. (No-op where the C library is not glibc.)"""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        yield
        return
    mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    try:
        yield
    finally:
        mallopt(-3, 32 * 1024 * 1024)


def batch_size_for(image_shape: Sequence[int], budget: int = 2**21) -> int:
    """Images per calibration batch: about ``budget`` pixel values, 1 to 128."""
    return max(1, min(128, budget // max(1, math.prod(image_shape))))


@steady_heap()
def calibrate_detector(
    probabilities: ProbabilityFn,
    craft: Crafter,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    fpr: float = 0.05,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    candidates: Sequence[str] | None = None,
    accuracy_margin: float = 0.05,
    max_squeezers: int = 2,
    max_cost: float | None = None,
    fpr_margin: float = FPR_MARGIN,
    seed: int = 0,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Choose squeezers and thresholds on split A; report every detector on split B.

    ``x`` (float in [0, 1] or uint8) is read ``batch_size`` images at a time: per batch the
    benign corruptions and adversarial inputs are made, scored and dropped, so memory holds the
    scores and one batch, whatever the size of the data. ``max_cost`` (model forward passes per
    input, the squeezed pass included; timed on the first batch) excludes slower squeezers
    before the data is scored with them. ``fpr_margin`` (standard errors of a benign group's
    rate) keeps thresholds under the target on the calibration split, so that held-out rates
    stay near it: 0 sets them at the plain quantile, 1.645 holds a group at or under the
    target on new data 95% of the time, at a price in detection on small data sets."""
    if not 0 < fpr < 0.5:
        raise ValueError("fpr must be between 0 and 0.5")
    started = time.perf_counter()
    channels = x.shape[1]
    squeezers = [parse_squeezer(c) for c in (candidates or candidates_for(channels))]
    a, b = stratified_halves(y, seed)
    size = batch_size or batch_size_for(x.shape[1:])
    steps = [0, -(-len(a) // size) + -(-len(b) // size)]

    def tick() -> None:
        steps[0] += 1
        if progress is not None:
            progress(steps[0], steps[1])

    timed = max(1, min(size, 2**19 // math.prod(x.shape[1:])))  # large images: a few suffice
    costs = _costs(probabilities, as_float(x[a[:timed]]), squeezers)
    affordable = [s for s in squeezers if max_cost is None or costs[s.name] <= max_cost]
    split_a = _split(probabilities, craft, x, y, a, attacks, affordable, seed, size, tick)
    report = _choose_squeezers(split_a, affordable, costs, accuracy_margin, max_squeezers, channels)
    report += [  # too slow to be worth scoring the data with
        CandidateReport(
            s.name,
            math.nan,
            math.nan,
            False,
            f"costs {costs[s.name]:.1f} forward passes per input (limit {max_cost:g}, "
            "[detect] max_cost)",
            costs[s.name],
        )
        for s in squeezers
        if s not in affordable
    ]
    chosen = tuple(r.squeezer for r in report if r.reason.startswith("chosen"))
    thresholds = _thresholds(split_a, chosen, fpr, fpr_margin)
    kept = [s for s in squeezers if s.name in chosen]  # the held-out split needs only these
    split_b = _split(probabilities, craft, x, y, b, attacks, kept, seed + 1, size, tick)
    n_adv = {
        f"{k}_{name}": len(v)
        for name, split in (("A", split_a), ("B", split_b))
        for k, v in split.adversarial.items()
    }
    detectors = [
        _evaluate(d, thresholds, split_b)
        for d in DETECTORS
        if d != "combined" or thresholds.combined is not None
    ]
    aucs = {d.detector: [v for v in d.roc_auc.values() if v == v] for d in detectors}
    best = max(detectors, key=lambda d: float(np.mean(aucs[d.detector] or [0.0])))
    clean_accuracy = float(torch.cat([split_a.correct, split_b.correct]).float().mean())
    return Calibration(
        thresholds=thresholds,
        detectors=detectors,
        candidates=report,
        best_detector=best.detector,
        clean_accuracy=clean_accuracy,
        n_calibration=len(a),
        n_evaluation=len(b),
        n_adversarial=n_adv,
        eps=eps,
        baseline=benign_flag_rates(thresholds, split_b),
        reason=_reason(chosen, split_a, accuracy_margin, clean_accuracy),
        seconds=time.perf_counter() - started,
    )


def _reason(chosen: tuple[str, ...], split: _Split, margin: float, accuracy: float) -> str:
    text = " + ".join(chosen) if chosen else "none"
    if len(split.positives()) == 0:
        return (
            f"no attack fooled the model at the calibration eps (detection 0 of 0): squeezers "
            f"{text} (the paper's recipe where it keeps clean accuracy, else the squeezer that "
            "keeps the most) with thresholds set from benign inputs only"
        )
    return (
        f"squeezers {text}: each keeps clean accuracy within {margin:.0%} of {accuracy:.3f} "
        "and together they give the best clean-versus-adversarial ROC AUC on the calibration "
        "split, for what they cost"
    )


def _costs(
    probabilities: ProbabilityFn, x: torch.Tensor, squeezers: Sequence[Squeezer]
) -> dict[str, float]:
    """Each squeezer's cost in model forward passes per input: the squeezed input's own pass
    plus the squeezing, timed on one batch (after a warm-up pass)."""
    probabilities(x)
    started = time.perf_counter()
    probabilities(x)
    forward = max(time.perf_counter() - started, 1e-6)
    costs = {}
    for s in squeezers:
        started = time.perf_counter()
        s(x)
        costs[s.name] = round(1.0 + (time.perf_counter() - started) / forward, 2)
    return costs


def _split(
    probabilities: ProbabilityFn,
    craft: Crafter,
    x: torch.Tensor,
    y: torch.Tensor,
    index: torch.Tensor,
    attacks: Sequence[str],
    squeezers: Sequence[Squeezer],
    seed: int,
    size: int,
    tick: Callable[[], None],
) -> _Split:
    """Scores of one split, a batch at a time: clean, every benign corruption, and every
    attack's successful adversarial inputs (crafted from the correctly classified ones)."""
    names = [s.name for s in squeezers]
    clean: list[ScoreBatch] = []
    benign: dict[str, list[ScoreBatch]] = {}
    adversarial: dict[str, list[ScoreBatch]] = {a: [] for a in attacks}
    for i, start in enumerate(range(0, len(index), size)):
        part = index[start : start + size]
        xb, yb = as_float(x[part]), y[part]
        scores = score_inputs(probabilities, xb, squeezers)
        clean.append(scores)
        right = scores.predicted == yb
        for name, image in benign_corruptions(xb, seed * 100_003 + i).items():
            benign.setdefault(name, []).append(score_inputs(probabilities, image, squeezers))
        if right.any():
            for attack in attacks:
                x_adv = craft(xb[right], yb[right], attack)
                fooled = score_inputs(probabilities, x_adv, squeezers)
                adversarial[attack].append(fooled.select(fooled.predicted != yb[right]))
        tick()

    def joined(batches: list[ScoreBatch]) -> ScoreBatch:
        return ScoreBatch.concat(batches) if batches else ScoreBatch.empty(names)

    return _Split(
        joined(clean),
        {k: joined(v) for k, v in benign.items()},
        {k: joined(v) for k, v in adversarial.items()},
        y[index],
    )


def benign_flag_rates(t: Thresholds, split: _Split) -> dict[str, float]:
    """Per flag (and ``flagged``: squeezing or combined), how often it fires on the held-out
    benign inputs: pooled over clean and corrupted inputs, and (``NAME_worst``) in the benign
    group where it fires most. Per-source rate alerts test against the pooled rate and require
    more than the worst group's rate, so a blurrier camera is not an attack."""
    fired: dict[str, list[torch.Tensor]] = {}
    rates: dict[str, float] = {}
    for group in split.groups():
        flags = t.flags(group)
        flags["flagged"] = flags["squeeze_suspicious"] | flags.get(
            "combined_suspicious", torch.zeros_like(flags["squeeze_suspicious"])
        )
        for name, hits in flags.items():
            fired.setdefault(name, []).append(hits)
            worst = f"{name}_worst"
            rates[worst] = max(rates.get(worst, 0.0), float(hits.float().mean()))
    for name, hits in fired.items():
        rates[name] = float(torch.cat(hits).float().mean())
    return rates


def _choose_squeezers(
    split: _Split,
    squeezers: Sequence[Squeezer],
    costs: dict[str, float],
    accuracy_margin: float,
    max_squeezers: int,
    channels: int,
) -> list[CandidateReport]:
    """Greedy forward selection by ROC AUC among squeezers that keep clean accuracy: of the
    squeezers whose gain in joint ROC AUC is worth their cost (at least ``MIN_GAIN`` per
    forward pass they cost), the one with the largest gain is added, while there is one. With
    no adversarial input to compare against, the paper's recipe for the input kind where it
    keeps accuracy, else the eligible squeezer that keeps the most."""
    clean = split.clean
    base = float(split.correct.float().mean()) if len(clean) else 0.0
    neg, pos = split.negatives(), split.positives()
    reports = {}
    for s in squeezers:
        acc = float((clean.squeezed[s.name] == split.labels).float().mean()) if len(clean) else 0.0
        auc = roc_auc(neg.divergences[s.name], pos.divergences[s.name])
        cost = costs.get(s.name, 1.0)
        if acc < base - accuracy_margin:
            ok, reason = False, f"drops clean accuracy from {base:.3f} to {acc:.3f}"
        else:
            ok, reason = True, "eligible"
        reports[s.name] = CandidateReport(s.name, acc, auc, ok, reason, cost)
    chosen: list[str] = []
    if len(pos) == 0:  # nothing to compare against: the paper's recipe, else the mildest
        eligible = [n for n, r in reports.items() if r.kept]
        chosen = [n for n in default_squeezers(channels) if n in eligible]
        if not chosen and eligible:
            chosen = [max(eligible, key=lambda n: (reports[n].clean_accuracy, -reports[n].cost))]
        for name in chosen:
            reports[name].reason = "chosen (no adversarial input: the paper's recipe or mildest)"
    best_auc = 0.5
    while len(pos) and len(chosen) < max_squeezers:
        options = [n for n, r in reports.items() if r.kept and n not in chosen]
        if not options:
            break
        gains = {}
        for n in options:
            auc = roc_auc(neg.max_over([*chosen, n]), pos.max_over([*chosen, n]))
            gain = -math.inf if math.isnan(auc) else auc - best_auc
            if gain > MIN_GAIN * _weight(reports[n]):  # worth what it costs
                gains[n] = gain
        if not gains:
            break
        name = max(gains, key=gains.__getitem__)  # the largest gain among those worth it
        chosen.append(name)
        best_auc += gains[name]
        reports[name].reason = f"chosen (joint ROC AUC {best_auc:.3f})"
    for name, report in reports.items():
        if report.kept and name not in chosen:
            report.reason = "eligible but did not raise the joint ROC AUC enough for its cost"
    return list(reports.values())


def _weight(report: CandidateReport) -> float:
    """A squeezer's cost in whole forward passes: timing noise does not change the choice
    between squeezers that cost about one pass."""
    return max(1.0, float(round(report.cost)))


def _quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), min(q, 1.0))) if len(values) else 0.0


def _worst_group_threshold(
    split: _Split, score: Callable[[ScoreBatch], torch.Tensor], fpr: float, margin: float
) -> float:
    return _worst_threshold([score(group) for group in split.groups()], fpr, margin)


def _worst_threshold(groups: Sequence[torch.Tensor], fpr: float, margin: float) -> float:
    """The smallest threshold that flags at most ``fpr`` of every benign group (score > t),
    with a margin of ``margin`` standard errors of the rate, so that held-out data stays
    at or under ``fpr`` (a threshold at the plain quantile exceeds it on new data half the
    time)."""
    return max(
        _quantile(g, 1 - fpr + margin * math.sqrt(fpr * (1 - fpr) / len(g)))
        for g in groups
        if len(g)
    )


def _thresholds(split: _Split, chosen: tuple[str, ...], fpr: float, margin: float) -> Thresholds:
    thresholds = Thresholds(
        squeezers=chosen,
        fpr=fpr,
        confidence=-_worst_group_threshold(split, lambda b: -b.confidence, fpr, margin),
        squeeze=_worst_group_threshold(split, lambda b: b.max_over(chosen), fpr, margin)
        if chosen
        else math.inf,
    )
    thresholds.combined = _train_combined(split, chosen, fpr, margin)
    return thresholds


def _train_combined(
    split: _Split, chosen: tuple[str, ...], fpr: float, margin: float
) -> CombinedDetector | None:
    """Logistic regression on the calibration split; its thresholds come from out-of-fold
    scores (each input scored by a model fitted without it), since a model scores the inputs it
    was fitted on as more benign than new ones (measured on 8×8 digits: thresholds set on the
    fitted scores flagged 2.2% of clean calibration inputs and 4–6% of held-out ones)."""
    neg, pos = split.negatives(), split.positives()
    if len(pos) < 10:
        return None
    features = [*BASE_FEATURES, *(f"div:{n}" for n in chosen)]
    rows = torch.cat(
        [torch.stack([feature_value(b, f) for f in features], dim=1) for b in (neg, pos)]
    ).numpy()
    labels = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    mean, scale, model = _fit_logistic(rows, labels)
    detector = CombinedDetector(
        features,
        mean.tolist(),
        scale.tolist(),
        model.coef_[0].tolist(),
        float(model.intercept_[0]),
        0.5,
    )
    folds = np.random.default_rng(0).integers(0, OUT_OF_FOLD, len(rows))
    held = np.empty(len(rows))
    for k in range(OUT_OF_FOLD):
        fit = folds != k
        m, sd, fold_model = _fit_logistic(rows[fit], labels[fit])
        held[~fit] = fold_model.decision_function((rows[~fit] - m) / sd)
    scores = torch.sigmoid(torch.from_numpy(held[: len(neg)])).float()
    groups = list(scores.split([len(g) for g in split.groups()]))
    detector.threshold = _worst_threshold(groups, fpr, margin)
    # strong evidence: above 99.9% of every benign group (a noisy camera included), not of
    # the pool, where the noisiest group's tail hides among the clean majority
    detector.strong = max(detector.threshold, _worst_threshold(groups, 1 - STRONG_QUANTILE, margin))
    return detector


def _fit_logistic(rows: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, Any]:
    from sklearn.linear_model import LogisticRegression

    mean, scale = rows.mean(0), rows.std(0) + 1e-9
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    return mean, scale, model.fit((rows - mean) / scale, labels)


def _detector_scores(detector: str, t: Thresholds, batch: ScoreBatch) -> tuple[torch.Tensor, float]:
    """(scores where higher is more suspicious, threshold) of one detector."""
    if detector == "confidence":
        return -batch.confidence, -t.confidence
    if detector == "squeezing":
        return batch.max_over(t.squeezers), t.squeeze
    if t.combined is None:
        raise ValueError("no combined detector was trained")
    return t.combined.score(batch), t.combined.threshold


def _evaluate(detector: str, t: Thresholds, split: _Split) -> DetectionReport:
    clean, threshold = _detector_scores(detector, t, split.clean)
    neg, _ = _detector_scores(detector, t, split.negatives())
    rates, aucs, detected = {}, {}, {}
    per_eps: dict[str, list[int]] = {}
    for attack, batch in split.adversarial.items():
        pos, _ = _detector_scores(detector, t, batch)
        hits = int((pos > threshold).sum())
        detected[attack] = [hits, len(pos)]
        rates[attack] = hits / len(pos) if len(pos) else float("nan")
        aucs[attack] = roc_auc(neg, pos)
        total = per_eps.setdefault(attack.partition("@")[2] or "-", [0, 0])
        total[0] += hits
        total[1] += len(pos)
    benign = {
        name: float((_detector_scores(detector, t, b)[0] > threshold).float().mean())
        for name, b in split.benign.items()
    }
    return DetectionReport(
        detector,
        rates,
        aucs,
        float((clean > threshold).float().mean()) if len(clean) else float("nan"),
        benign,
        detected,
        {e: h / n if n else float("nan") for e, (h, n) in per_eps.items()},
    )
