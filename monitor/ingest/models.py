"""The models the ingester scores with: references resolved (briefly cached, aliases move),
classifiers loaded once, and each version's detector thresholds."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from monitor.calibrate import (
    DetectSettings,
    StoredCalibration,
    calibrate_model,
    current_calibration,
    dataset_for,
    probability_fn,
)
from monitor.classifiers import Classifier
from monitor.config import Settings
from monitor.db.session import Database
from monitor.detect.scores import ProbabilityFn
from monitor.detect.squeezers import Squeezer, default_squeezers, parse_squeezer
from monitor.errors import BadRecord, DatasetError, ModelIncompatible, ModelNotFound
from monitor.registry import ModelVersionRef, Registry

log = logging.getLogger(__name__)
RESOLVE_TTL_SECONDS = 60.0


@dataclass
class ScoringModel:
    ref: ModelVersionRef
    classifier: Classifier
    probabilities: ProbabilityFn
    squeezers: list[Squeezer]
    calibration: StoredCalibration | None
    # the calibration's uninformative fingerprint hashes, left out of every fingerprint
    stop_hashes: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.classifier.input_shape


@dataclass
class ModelCache:
    db: Database
    registry: Registry
    settings: Settings
    device: str = "cpu"
    capacity: int = 8
    notes: list[str] = field(default_factory=list)
    _refs: dict[tuple[str, str | None], tuple[float, ModelVersionRef]] = field(default_factory=dict)
    _models: OrderedDict[ModelVersionRef, ScoringModel] = field(default_factory=OrderedDict)

    def resolve(self, model: str, version: str | None) -> ModelVersionRef:
        """The version a record names (number, alias or default); BadRecord when unknown."""
        key = (model, version)
        cached = self._refs.get(key)
        if cached is not None and time.monotonic() - cached[0] < RESOLVE_TTL_SECONDS:
            return cached[1]
        if version is None:
            reference = model
        elif version.isdigit():
            reference = f"models:/{model}/{version}"
        else:
            reference = f"models:/{model}@{version}"
        try:
            ref = self.registry.resolve(reference)
        except ModelNotFound as err:
            raise BadRecord(str(err)) from None
        self._refs[key] = (time.monotonic(), ModelVersionRef(ref.name, ref.version))
        return self._refs[key][1]

    def get(self, ref: ModelVersionRef) -> ScoringModel:
        """The loaded model with its squeezers and thresholds (LRU cached)."""
        if ref in self._models:
            self._models.move_to_end(ref)
            return self._models[ref]
        try:
            classifier = self.registry.load(ref, self.device)
        except ModelIncompatible as err:
            raise BadRecord(str(err)) from None
        calibration = self._calibration(ref)
        if calibration is not None:
            names = list(calibration.thresholds.squeezers)
        else:
            channels = classifier.input_shape[0] if classifier.input_shape else 1
            names = list(default_squeezers(channels))
        model = ScoringModel(
            ref,
            classifier,
            probability_fn(classifier),
            [parse_squeezer(n) for n in names],
            calibration,
            _stop_hashes(calibration),
        )
        self._models[ref] = model
        if len(self._models) > self.capacity:
            self._models.popitem(last=False)
        return model

    def _calibration(self, ref: ModelVersionRef) -> StoredCalibration | None:
        stored = current_calibration(self.db, ref.name, ref.version)
        if stored is not None:
            return stored
        detect = DetectSettings.from_table(self.settings.section("detect"))
        if dataset_for(self.registry, ref, detect) is None:
            self._note(
                f"{ref} has no detector calibration and no dataset to calibrate on: "
                "its inputs are scored without flags (run `robmon calibrate`)."
            )
            return None
        log.info("calibrating the detector of %s before scoring its inputs", ref)
        try:
            stored = calibrate_model(self.db, self.registry, self.settings, ref, device=self.device)
        except DatasetError as err:
            self._note(f"{ref} could not be calibrated ({err}); scored without flags.")
            return None
        self._note(
            f"calibrated the detector of {ref} on {stored.dataset} "
            f"(squeezers {', '.join(stored.thresholds.squeezers) or 'none'})."
        )
        return stored

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            log.warning(message)


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images) if images else torch.empty(0)


def _stop_hashes(calibration: StoredCalibration | None) -> np.ndarray | None:
    stop = calibration.baseline.get("stop_hashes") if calibration else None
    return np.array(stop, dtype=np.uint64) if stop else None
