"""Detector calibration: choose squeezers, set thresholds at a target false-positive rate, and
measure detection on held-out adversarial inputs.

The paper's fixed squeezer recipe does not carry over to every model (on the 8×8 digits CNN a
2×2 median alone costs a third of the clean accuracy), so squeezers are chosen per model version:
candidates that keep clean accuracy within ``accuracy_margin`` are added greedily while they
raise the ROC AUC of clean-versus-adversarial separation. Benign corruptions (noise, blur, JPEG,
brightness) join the clean side, so a blurrier camera is not an attack. Everything is chosen on
one half of the data (split A) and reported on the other (split B).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from monitor.detect.scores import BASE_FEATURES, ProbabilityFn, ScoreBatch, roc_auc, score_inputs
from monitor.detect.squeezers import CANDIDATES, parse_squeezer

DETECTORS = ("confidence", "squeezing", "combined")
STRONG_QUANTILE = 0.999
# (x, y, attack name) -> adversarial x, crafted by whoever can (white-box or a surrogate)
Crafter = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]


# -- thresholds, as stored and as used by the ingester --------------------------------------


def _feature_value(batch: ScoreBatch, name: str) -> torch.Tensor:
    value = batch.feature(name).double()
    if name == "confidence":
        return torch.log(1.0 - value + 1e-6)
    if name.startswith("div:"):
        return torch.log(value + 1e-6)
    if name == "roughness":
        return torch.log(value + 1e-4)
    return value


@dataclass
class CombinedDetector:
    """Logistic regression over standardised per-input features (scikit-learn-trained)."""

    features: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    threshold: float
    strong: float | None = None  # strong evidence: above 99.9% of every benign group

    def score(self, batch: ScoreBatch) -> torch.Tensor:
        """Probability-like score in (0, 1): higher means more likely adversarial."""
        x = torch.stack([_feature_value(batch, f) for f in self.features], dim=1)
        z = (x - torch.tensor(self.mean, dtype=torch.float64)) / torch.tensor(
            self.scale, dtype=torch.float64
        )
        logits = z @ torch.tensor(self.coef, dtype=torch.float64) + self.intercept
        return torch.sigmoid(logits).float()


@dataclass
class Thresholds:
    """What the ingester flags: confidence below, divergence above, combined score above."""

    squeezers: tuple[str, ...]
    fpr: float
    confidence: float
    squeeze: float
    combined: CombinedDetector | None = None

    def flags(self, batch: ScoreBatch) -> dict[str, torch.Tensor]:
        flags = {
            "low_confidence": batch.confidence < self.confidence,
            "squeeze_suspicious": batch.max_over(self.squeezers) > self.squeeze,
        }
        if self.combined is not None:
            score = self.combined.score(batch)
            flags["combined_suspicious"] = score > self.combined.threshold
            if self.combined.strong is not None:
                flags["strong_suspicious"] = score > self.combined.strong
        return flags

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Thresholds:
        combined = data.get("combined")
        return Thresholds(
            squeezers=tuple(data["squeezers"]),
            fpr=float(data["fpr"]),
            confidence=float(data["confidence"]),
            squeeze=float(data["squeeze"]),
            combined=CombinedDetector(**combined) if combined else None,
        )


# -- benign corruptions ----------------------------------------------------------------------


def _gaussian_blur(x: torch.Tensor, sigma: float = 0.6) -> torch.Tensor:
    radius = 1
    grid = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel1d = torch.exp(-(grid**2) / (2 * sigma**2))
    kernel1d /= kernel1d.sum()
    kernel = (kernel1d[:, None] * kernel1d[None, :]).expand(x.shape[1], 1, -1, -1)
    padded = F.pad(x, (radius,) * 4, mode="replicate")
    return F.conv2d(padded, kernel.contiguous(), groups=x.shape[1]).clamp(0, 1)


def _jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    from PIL import Image

    out = []
    for image in x:
        array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=quality)
        decoded = np.asarray(Image.open(buffer), dtype=np.float32) / 255.0
        decoded = decoded[..., None] if decoded.ndim == 2 else decoded
        out.append(torch.from_numpy(decoded).permute(2, 0, 1))
    return torch.stack(out)


def benign_corruptions(x: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """What cameras and transport do to natural images: light noise, blur, JPEG, a brightness
    shift, a palette of 8 levels, and a resize down and back up. None is adversarial; each is
    one benign group of the calibration, whose rates every threshold must hold. (Heavier noise
    and poorer JPEG as groups cost the detector the strong PGD inputs a stealthy attacker mixes
    into clean traffic: measured on 28×28 digits, the alert rules handle such cameras instead.)"""
    gen = torch.Generator().manual_seed(seed)
    h, w = x.shape[-2:]
    small = (max(4, round(0.6 * h)), max(4, round(0.6 * w)))
    return {
        "noise": (x + 0.03 * torch.randn(x.shape, generator=gen)).clamp(0, 1),
        "blur": _gaussian_blur(x),
        "jpeg": _jpeg(x),
        "brightness": (x + 0.1).clamp(0, 1),
        "palette": torch.round(x * 7) / 7,
        "resized": F.interpolate(
            F.interpolate(x, small, mode="bilinear", antialias=True), (h, w), mode="bilinear"
        ).clamp(0, 1),
    }


# -- calibration -----------------------------------------------------------------------------


@dataclass
class CandidateReport:
    squeezer: str
    clean_accuracy: float
    roc_auc: float
    kept: bool
    reason: str


@dataclass
class DetectionReport:
    """Held-out (split B) performance of one detector."""

    detector: str
    detection_rate: dict[str, float]  # per attack, on successful adversarial inputs
    roc_auc: dict[str, float]
    fpr_clean: float
    fpr_benign: dict[str, float]


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
    clean: ScoreBatch
    benign: dict[str, ScoreBatch]
    adversarial: dict[str, ScoreBatch]

    def negatives(self) -> ScoreBatch:
        return ScoreBatch.concat([self.clean, *self.benign.values()])

    def groups(self) -> list[ScoreBatch]:
        """Clean inputs and each benign corruption: thresholds hold the FPR in every group."""
        return [self.clean, *self.benign.values()]

    def positives(self) -> ScoreBatch:
        return ScoreBatch.concat(list(self.adversarial.values()))


def calibrate_detector(
    probabilities: ProbabilityFn,
    craft: Crafter,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    fpr: float = 0.05,
    attacks: Sequence[str] = ("fgsm", "pgd"),
    candidates: Sequence[str] = CANDIDATES,
    accuracy_margin: float = 0.05,
    max_squeezers: int = 2,
    seed: int = 0,
) -> Calibration:
    """Choose squeezers and thresholds on split A; report every detector on split B."""
    if not 0 < fpr < 0.5:
        raise ValueError("fpr must be between 0 and 0.5")
    squeezers = [parse_squeezer(c) for c in candidates]
    a, b = stratified_halves(y, seed)
    correct = probabilities(x).argmax(1) == y
    n_adv: dict[str, int] = {}
    splits = {"A": _split(probabilities, craft, x[a], y[a], correct[a], attacks, squeezers, seed)}
    report = _choose_squeezers(
        probabilities, x[a], y[a], squeezers, splits["A"], accuracy_margin, max_squeezers
    )
    chosen = tuple(r.squeezer for r in report if r.kept and r.reason.startswith("chosen"))
    thresholds = _thresholds(splits["A"], chosen, fpr)
    # the held-out split needs only the chosen squeezers
    kept = [s for s in squeezers if s.name in chosen]
    splits["B"] = _split(probabilities, craft, x[b], y[b], correct[b], attacks, kept, seed)
    for name, split in splits.items():
        n_adv.update({f"{k}_{name}": len(v) for k, v in split.adversarial.items()})
    detectors = [
        _evaluate(d, thresholds, splits["B"])
        for d in DETECTORS
        if d != "combined" or thresholds.combined is not None
    ]
    best = max(detectors, key=lambda d: np.nanmean(list(d.roc_auc.values())))
    baseline = benign_flag_rates(thresholds, splits["B"])
    clean_accuracy = float(correct.float().mean())
    chosen_text = " + ".join(chosen) if chosen else "none"
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
        baseline=baseline,
        reason=(
            f"squeezers {chosen_text}: each keeps clean accuracy within "
            f"{accuracy_margin:.0%} of {clean_accuracy:.3f} and together they give the best "
            "clean-versus-adversarial ROC AUC on the calibration split"
        ),
    )


def _split(
    probabilities: ProbabilityFn,
    craft: Crafter,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    attacks: Sequence[str],
    squeezers: Sequence,
    seed: int,
) -> _Split:
    """Scores of one split: clean, every benign corruption, and every attack's successful
    adversarial inputs (crafted from the correctly classified ones)."""
    benign = {
        k: score_inputs(probabilities, v, squeezers) for k, v in benign_corruptions(x, seed).items()
    }
    adversarial = {}
    for attack in attacks:
        x_adv = craft(x[correct], y[correct], attack)
        scores = score_inputs(probabilities, x_adv, squeezers)
        adversarial[attack] = scores.select(scores.predicted != y[correct])
    return _Split(score_inputs(probabilities, x, squeezers), benign, adversarial)


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
    probabilities: ProbabilityFn,
    x: torch.Tensor,
    y: torch.Tensor,
    squeezers: Sequence,
    split: _Split,
    accuracy_margin: float,
    max_squeezers: int,
) -> list[CandidateReport]:
    """Greedy forward selection by ROC AUC among squeezers that keep clean accuracy."""
    base = float((probabilities(x).argmax(1) == y).float().mean())
    neg, pos = split.negatives(), split.positives()
    reports = {}
    for s in squeezers:
        acc = float((probabilities(s(x)).argmax(1) == y).float().mean())
        auc = roc_auc(neg.divergences[s.name], pos.divergences[s.name])
        ok = acc >= base - accuracy_margin
        reason = "eligible" if ok else f"drops clean accuracy from {base:.3f} to {acc:.3f}"
        reports[s.name] = CandidateReport(s.name, acc, auc, ok, reason)
    chosen: list[str] = []
    best_auc = 0.5
    while len(chosen) < max_squeezers:
        options = [n for n, r in reports.items() if r.kept and n not in chosen]
        if not options:
            break
        scored = {
            n: roc_auc(neg.max_over([*chosen, n]), pos.max_over([*chosen, n])) for n in options
        }
        name = max(scored, key=lambda n: -math.inf if math.isnan(scored[n]) else scored[n])
        if not scored[name] > best_auc + 0.005:
            break
        chosen.append(name)
        best_auc = scored[name]
        reports[name].reason = f"chosen (joint ROC AUC {best_auc:.3f})"
    for name, report in reports.items():
        if report.kept and name not in chosen:
            report.reason = "eligible but did not raise the joint ROC AUC"
    return list(reports.values())


def _quantile(values: torch.Tensor, q: float) -> float:
    return float(torch.quantile(values.double(), q)) if len(values) else 0.0


def _worst_group_threshold(
    split: _Split, score: Callable[[ScoreBatch], torch.Tensor], fpr: float
) -> float:
    """The smallest threshold that flags at most ``fpr`` of every benign group (score > t)."""
    return max(_quantile(score(group), 1 - fpr) for group in split.groups())


def _thresholds(split: _Split, chosen: tuple[str, ...], fpr: float) -> Thresholds:
    thresholds = Thresholds(
        squeezers=chosen,
        fpr=fpr,
        confidence=-_worst_group_threshold(split, lambda b: -b.confidence, fpr),
        squeeze=_worst_group_threshold(split, lambda b: b.max_over(chosen), fpr)
        if chosen
        else math.inf,
    )
    thresholds.combined = _train_combined(split, chosen, fpr)
    return thresholds


def _train_combined(split: _Split, chosen: tuple[str, ...], fpr: float) -> CombinedDetector | None:
    from sklearn.linear_model import LogisticRegression

    neg, pos = split.negatives(), split.positives()
    if len(pos) < 10:
        return None
    features = [*BASE_FEATURES, *(f"div:{n}" for n in chosen)]
    rows = torch.cat(
        [torch.stack([_feature_value(b, f) for f in features], dim=1) for b in (neg, pos)]
    ).numpy()
    labels = np.r_[np.zeros(len(neg)), np.ones(len(pos))]
    mean, scale = rows.mean(0), rows.std(0) + 1e-9
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000)
    model.fit((rows - mean) / scale, labels)
    detector = CombinedDetector(
        features,
        mean.tolist(),
        scale.tolist(),
        model.coef_[0].tolist(),
        float(model.intercept_[0]),
        0.5,
    )
    detector.threshold = _worst_group_threshold(split, detector.score, fpr)
    # strong evidence: above 99.9% of every benign group (a noisy camera included), not of
    # the pool, where the noisiest group's tail hides among the clean majority
    detector.strong = max(
        detector.threshold, _worst_group_threshold(split, detector.score, 1 - STRONG_QUANTILE)
    )
    return detector


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
    rates, aucs = {}, {}
    for attack, batch in split.adversarial.items():
        pos, _ = _detector_scores(detector, t, batch)
        rates[attack] = float((pos > threshold).float().mean()) if len(pos) else float("nan")
        aucs[attack] = roc_auc(neg, pos)
    benign = {
        name: float((_detector_scores(detector, t, b)[0] > threshold).float().mean())
        for name, b in split.benign.items()
    }
    return DetectionReport(detector, rates, aucs, float((clean > threshold).float().mean()), benign)
