"""What the ingester applies to each scored input: a version's thresholds (confidence,
squeezing divergence) and its combined detector, as calibration stores them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import torch

from monitor.detect.scores import ScoreBatch


def feature_value(batch: ScoreBatch, name: str) -> torch.Tensor:
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
        mean, scale, coef = self._parameters
        x = torch.stack([feature_value(batch, f) for f in self.features], dim=1)
        logits = ((x - mean) / scale) @ coef + self.intercept
        return torch.sigmoid(logits).float()

    @cached_property
    def _parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mean, scale and coef as float64 tensors, made once (not a field: not stored)."""
        return tuple(
            torch.tensor(v, dtype=torch.float64) for v in (self.mean, self.scale, self.coef)
        )


@dataclass
class Thresholds:
    """What the ingester flags: confidence below, divergence above, combined score above."""

    squeezers: tuple[str, ...]
    fpr: float
    confidence: float
    squeeze: float
    combined: CombinedDetector | None = None

    def flags(
        self, batch: ScoreBatch, combined_score: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Each flag per input; ``combined_score``: the combined detector's scores of ``batch``
        when the caller has them already."""
        flags = {
            "low_confidence": batch.confidence < self.confidence,
            "squeeze_suspicious": batch.max_over(self.squeezers) > self.squeeze,
        }
        if self.combined is not None:
            score = self.combined.score(batch) if combined_score is None else combined_score
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
