"""The models the ingester scores with: references resolved (briefly cached, aliases move),
classifiers loaded once, and each version's detector thresholds.

The ingester never calibrates: a version without a calibration is scored without flags (noted
once, counted in ``robmon_records_uncalibrated_total``), a calibration request is left for the
scheduler's calibration job (or ``robmon calibrate``), and the stored calibration is picked up
within ``CALIBRATION_RECHECK_SECONDS`` of landing."""

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
    current_calibration,
    dataset_for,
    probability_fn,
    request_calibration,
)
from monitor.classifiers import Classifier
from monitor.config import Settings
from monitor.db.session import Database
from monitor.detect.scores import ProbabilityFn
from monitor.detect.squeezers import Squeezer, default_squeezers, parse_squeezer
from monitor.errors import (
    BadRecord,
    ModelIncompatible,
    RegistryError,
    RegistryUnavailable,
    first_line,
    quoted,
)
from monitor.registry import ModelVersionRef, Registry

log = logging.getLogger(__name__)
RESOLVE_TTL_SECONDS = 60.0
CALIBRATION_RECHECK_SECONDS = 30.0


@dataclass
class ScoringModel:
    ref: ModelVersionRef
    classifier: Classifier
    probabilities: ProbabilityFn
    squeezers: list[Squeezer]
    calibration: StoredCalibration | None
    # the calibration's uninformative fingerprint hashes, left out of every fingerprint
    stop_hashes: np.ndarray | None = None
    checked_at: float = 0.0  # when the store was last asked for a calibration (monotonic)

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
        """The version a record names (canonical number, alias or default), as the registry's
        version number: every spelling reaches one model and one calibration. Whatever the
        registry answers about it, short of being unreachable, is the record's BadRecord."""
        key = (model, version)
        cached = self._refs.get(key)
        if cached is not None and time.monotonic() - cached[0] < RESOLVE_TTL_SECONDS:
            return cached[1]
        if version is None:
            reference = model
        elif version.isascii() and version.isdigit():
            reference = f"models:/{model}/{version}"
        else:
            reference = f"models:/{model}@{version}"
        try:
            ref = self.registry.resolve(reference)
        except RegistryUnavailable:
            raise
        except RegistryError as err:  # unknown, malformed, refused by MLflow: this record's
            raise BadRecord(str(err)) from None
        except Exception as err:  # an answer nobody foresaw (e.g. a store's OverflowError)
            log.warning("resolving %s failed", reference, exc_info=True)
            raise BadRecord(
                f"the registry could not resolve {quoted(reference)} "
                f"({type(err).__name__}: {quoted(first_line(err))})."
            ) from None
        canonical = ModelVersionRef(ref.name, str(int(ref.version)))
        self._refs[key] = (time.monotonic(), canonical)
        return canonical

    def get(self, ref: ModelVersionRef) -> ScoringModel:
        """The loaded model with its squeezers and thresholds (LRU cached)."""
        model = self._models.get(ref)
        if model is not None:
            self._models.move_to_end(ref)
            if model.calibration is None and (
                time.monotonic() - model.checked_at > CALIBRATION_RECHECK_SECONDS
            ):
                self._use(model, self._calibration(ref))
            return model
        try:
            classifier = self.registry.load(ref, self.device)
        except RegistryUnavailable:
            raise
        except (ModelIncompatible, RegistryError) as err:  # a version that cannot be loaded
            raise BadRecord(str(err)) from None
        model = ScoringModel(ref, classifier, probability_fn(classifier), [], None)
        self._use(model, self._calibration(ref))
        self._models[ref] = model
        if len(self._models) > self.capacity:
            self._models.popitem(last=False)
        return model

    def _use(self, model: ScoringModel, calibration: StoredCalibration | None) -> None:
        """Score with ``calibration``'s squeezers and thresholds (none: the paper's squeezers,
        no flags)."""
        model.checked_at = time.monotonic()
        if calibration is not None:
            names = list(calibration.thresholds.squeezers)
            if model.calibration is None and model.squeezers:
                self._note(f"{model.ref}: calibration {calibration.id} found; flags from now on.")
        elif model.squeezers:
            return
        else:
            shape = model.classifier.input_shape
            names = list(default_squeezers(shape[0] if shape else 1))
        model.squeezers = [parse_squeezer(n) for n in names]
        model.calibration = calibration
        model.stop_hashes = _stop_hashes(calibration)

    def _calibration(self, ref: ModelVersionRef) -> StoredCalibration | None:
        """The stored calibration; without one, a request for the calibration job (never a
        calibration here: it takes minutes and may fail, and ingestion must go on)."""
        stored = current_calibration(self.db, ref.name, ref.version)
        if stored is not None:
            return stored
        detect = DetectSettings.from_table(self.settings.section("detect"))
        if dataset_for(self.registry, ref, detect) is None:
            self._note(
                f"{ref} has no detector calibration and no dataset to calibrate on: "
                f"its inputs are scored without flags (run `robmon calibrate {ref.uri} "
                "--dataset DATA`)."
            )
            return None
        request_calibration(self.db, ref)
        self._note(
            f"{ref} has no detector calibration yet: its inputs are scored without flags until "
            f"the scheduler's calibration job (or `robmon calibrate {ref.uri}`) stores one."
        )
        return None

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            log.warning(message)


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images) if images else torch.empty(0)


def _stop_hashes(calibration: StoredCalibration | None) -> np.ndarray | None:
    stop = calibration.baseline.get("stop_hashes") if calibration else None
    return np.array(stop, dtype=np.uint64) if stop else None
