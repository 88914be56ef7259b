"""The models the ingester scores with: references resolved (briefly cached, aliases move),
classifiers loaded once, and each version's detector thresholds.

The ingester never calibrates: a version without a calibration is scored without flags (noted
once, counted in ``robmon_records_uncalibrated_total``), a calibration request is left for the
scheduler's calibration job (or ``robmon calibrate``), and the stored calibration is picked up
within ``CALIBRATION_RECHECK_SECONDS`` of landing.

Each model also carries its conversion rule (``[ingest.convert."NAME"]`` over the version's tag
``robustness.convert``): ``ScoringModel.fit`` converts an input that does not fit, where the rule
allows, and says in the dead letter which rule would convert one that it may not."""

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
from monitor.classifiers import Classifier, check_input_shape
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
from monitor.ingest.convert import Conversion, convert_image, convertible_colour, needs
from monitor.ingest.convert_rules import ConvertRule, config_rules, rule_hint, tag_rule
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
    rule: ConvertRule | None = None  # how inputs that do not fit are converted
    rule_problem: str | None = None  # why the version's tag robustness.convert is not used

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        return self.classifier.input_shape

    def fit(self, image: torch.Tensor) -> tuple[torch.Tensor, Conversion | None]:
        """``image`` converted to the model's C×H×W input as its rule allows, and what was done
        (None: nothing); ModelIncompatible when it still does not fit, naming the rule to add."""
        target = _pixel_shape(self.input_shape)
        conversion = None
        if target is not None and self.rule is not None and tuple(image.shape) != target:
            image, conversion = convert_image(image, target, self.rule)
        try:
            check_input_shape(self.classifier, tuple(image.shape), "the input")
        except ModelIncompatible as err:
            reason = str(err).rstrip(".")
            if conversion is not None:  # the shape it has after the part the rule allows
                reason += f" ({conversion.text})"
            raise ModelIncompatible(self._unfit(reason, image, target)) from None
        return image, conversion

    def _unfit(self, reason: str, image: torch.Tensor, target: tuple[int, int, int] | None) -> str:
        """The shape check's ``reason`` with the rule that would convert the input."""
        if target is None:
            return f"{reason}."
        resize, colour = needs(tuple(image.shape), target)
        if colour and not convertible_colour(image.shape[0], target[0]):
            return f"{reason}."
        if self.rule_problem is not None:
            return f"{reason}; {self.rule_problem}, so nothing was converted."
        return f"{reason}; {rule_hint(self.ref.name, resize, colour, self.rule)}."


@dataclass
class ModelCache:
    db: Database
    registry: Registry
    settings: Settings
    device: str = "cpu"
    capacity: int = 8
    notes: list[str] = field(default_factory=list)
    rules: dict[str, ConvertRule] | None = None  # [ingest.convert."NAME"] (None: from settings)
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
        model.rule, model.rule_problem = self._rule(ref)
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

    def _rule(self, ref: ModelVersionRef) -> tuple[ConvertRule | None, str | None]:
        """The model's conversion rule: robmon.toml's, else its version's tag (a bad tag: no
        rule, and why, for the dead letters of the inputs it should have converted)."""
        if self.rules is None:
            self.rules = config_rules(self.settings.tables)
        if ref.name in self.rules:
            return self.rules[ref.name], None
        try:
            tags = self.registry.version_tags(ref)
        except RegistryUnavailable:
            raise
        except RegistryError as err:
            raise BadRecord(str(err)) from None
        try:
            return tag_rule(tags), None
        except ValueError as err:
            self._note(f"{ref}: {err}; inputs that do not fit it are dead-lettered.")
            return None, str(err)

    def _note(self, message: str) -> None:
        if message not in self.notes:
            self.notes.append(message)
            log.warning(message)


def stack_images(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images) if images else torch.empty(0)


def _pixel_shape(shape: tuple[int, ...] | None) -> tuple[int, int, int] | None:
    """A model's C×H×W input shape when every dimension is known (None: flat or open)."""
    if shape is None or len(shape) != 3 or any(d is None or int(d) < 1 for d in shape):
        return None
    return int(shape[0]), int(shape[1]), int(shape[2])


def _stop_hashes(calibration: StoredCalibration | None) -> np.ndarray | None:
    stop = calibration.baseline.get("stop_hashes") if calibration else None
    return np.array(stop, dtype=np.uint64) if stop else None
