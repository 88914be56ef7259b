"""Calibrate the input detector of a registry model version and store its thresholds.

Steps: resolve the model -> pick the dataset -> load the model (and a surrogate for black boxes)
-> craft adversarial inputs at several strengths -> ``detect.calibration.calibrate_detector``
-> store. The ingester reads the newest stored calibration of each model version.

Strengths: detection is measured and thresholds are set against FGSM, PGD stopped at the
decision boundary, and PGD pushed past it (10 steps, no early stop: confidently wrong, as a
determined attacker sends them), at every eps of a grid chosen by the input kind (grayscale
0.1 / 0.2 / 0.3, colour 2/255 / 4/255 / 8/255; ``[detect] eps`` or ``--eps`` replace it): a
detector chosen at one weak eps misses the strong attacker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import torch
from sqlalchemy import select

from monitor.attacks import fgsm, pgd
from monitor.classifiers import Classifier, TorchClassifier, check_input_shape
from monitor.config import Settings
from monitor.datasets import load_dataset
from monitor.db.models import CalibrationRequest, DetectorCalibration
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.detect.calibration import FPR_MARGIN, Calibration, calibrate_detector
from monitor.detect.fingerprints import benign_min_shared, stop_hashes
from monitor.detect.thresholds import Thresholds
from monitor.errors import ConfigError, DatasetError, RobmonError
from monitor.progress import Reporter, silent
from monitor.registry import DATASET_TAG, ModelVersionRef, Registry

GRAYSCALE_EPS = (0.1, 0.2, 0.3)
COLOUR_EPS = (2 / 255, 4 / 255, 8 / 255)
ATTACKS = ("fgsm", "pgd", "pgd+")  # pgd+: 10 steps without early stop, past the boundary
_DETECT_KEYS = {
    "dataset",
    "fpr",
    "eps",
    "accuracy_margin",
    "candidates",
    "max_squeezers",
    "max_cost",
    "fpr_margin",
    "limit",
}


@dataclass
class StoredCalibration:
    id: int
    model_name: str
    model_version: str
    dataset: str
    created_at: datetime
    fpr: float
    eps: float
    thresholds: Thresholds
    baseline: dict[str, float]
    report: dict[str, Any]


@dataclass(frozen=True)
class DetectSettings:
    """The ``[detect]`` table of robmon.toml."""

    dataset: str | None = None
    fpr: float = 0.05
    eps: float | tuple[float, ...] | None = None  # None: the grid for the input kind
    accuracy_margin: float = 0.05
    candidates: tuple[str, ...] | None = None  # None: the candidates of the input kind
    max_squeezers: int = 2
    max_cost: float = 10.0  # forward passes per input a squeezer may cost (its own included)
    fpr_margin: float = FPR_MARGIN  # standard errors each benign rate stays under the target
    limit: int | None = None

    @staticmethod
    def from_table(table: dict[str, Any]) -> DetectSettings:
        unknown = set(table) - _DETECT_KEYS
        if unknown:
            raise ConfigError(
                f"robmon.toml: unknown key detect.{sorted(unknown)[0]} "
                f"(known: {', '.join(sorted(_DETECT_KEYS))})."
            )
        values = dict(table)
        if "candidates" in values:
            values["candidates"] = tuple(values["candidates"])
        if isinstance(values.get("eps"), list):
            values["eps"] = tuple(values["eps"])
        try:
            settings = DetectSettings(**values)
        except TypeError as err:
            raise ConfigError(f"robmon.toml [detect]: {err}.") from None
        if not 0 < settings.fpr < 0.5:
            raise ConfigError("robmon.toml: detect.fpr must be between 0 and 0.5.")
        return settings


def dataset_for(registry: Registry, ref: ModelVersionRef, detect: DetectSettings) -> str | None:
    """The version's robustness.dataset tag, else the configured [detect].dataset."""
    return registry.version_tags(ref).get(DATASET_TAG) or detect.dataset


def calibrate_model(
    db: Database,
    registry: Registry,
    settings: Settings,
    reference: str | ModelVersionRef,
    *,
    dataset: str | None = None,
    fpr: float | None = None,
    eps: float | Sequence[float] | None = None,
    limit: int | None = None,
    device: str = "cpu",
    report: Reporter = silent,
) -> StoredCalibration:
    """Calibrate thresholds for one model version on clean data and store them."""
    detect = DetectSettings.from_table(settings.section("detect"))
    ref = reference if isinstance(reference, ModelVersionRef) else registry.resolve(reference)
    dataset = dataset or dataset_for(registry, ref, detect)
    if not dataset:
        raise DatasetError(
            f"{ref} has no robustness.dataset tag and [detect].dataset is not set; pass --dataset."
        )
    fpr = detect.fpr if fpr is None else fpr
    if not 0 < fpr < 0.5:
        raise ConfigError("--fpr must be between 0 and 0.5.")
    data = load_dataset(dataset).head(limit or detect.limit)
    grid = eps_grid(detect.eps if eps is None else eps, data.image_shape)
    model = registry.load(ref, device)
    check_input_shape(model, data.image_shape, f"dataset {dataset}")
    crafter = (
        model
        if isinstance(model, TorchClassifier)
        else registry.load(registry.find_surrogate(dataset, exclude=ref.name), device)
    )
    report("calibrating detector", 0, 1)
    calibration = calibrate_detector(
        probability_fn(model),
        _craft(crafter),
        data.pixels,
        data.y,
        eps=max(grid),
        fpr=fpr,
        attacks=[f"{attack}@{e:.6g}" for e in grid for attack in ATTACKS],
        candidates=detect.candidates,
        accuracy_margin=detect.accuracy_margin,
        max_squeezers=detect.max_squeezers,
        max_cost=detect.max_cost,
        fpr_margin=detect.fpr_margin,
        progress=lambda done, total: report("calibrating detector", done, total + 1),
    )
    stop = stop_hashes(data.pixels)
    calibration.baseline["stop_hashes"] = [int(h) for h in stop]
    calibration.baseline["min_shared"] = benign_min_shared(data.pixels, stop)
    report("calibrating detector", 1, 1)
    return _store(db, ref, dataset, calibration)


def probability_fn(model: Classifier) -> Callable[[torch.Tensor], torch.Tensor]:
    """Class probabilities of any classifier; labels-only models give one-hot rows."""

    def probabilities(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            probs = model.probabilities(x)
        if probs is None:
            with torch.no_grad():
                labels = model.labels(x)
            probs = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).float()
        return probs

    return probabilities


def eps_grid(
    eps: float | Sequence[float] | None, image_shape: tuple[int, ...]
) -> tuple[float, ...]:
    """The strengths to calibrate against: as given, else by input kind (channels)."""
    from monitor.audit.config import parse_eps

    if eps is None:
        return GRAYSCALE_EPS if image_shape[0] == 1 else COLOUR_EPS
    values = [eps] if isinstance(eps, int | float | str) else list(eps)
    try:  # numbers, or text as on the command line ("8/255")
        grid = tuple(v for e in values for v in parse_eps(str(e)))
    except RobmonError:
        raise ConfigError(
            "the calibration eps takes numbers such as 0.1,0.2 or 8/255, "
            f"not {', '.join(map(str, values))}."
        ) from None
    if not grid or not all(0 < e <= 1 for e in grid):
        raise ConfigError("the calibration eps must be in (0, 1], e.g. 0.1,0.2 or 8/255.")
    return grid


def _craft(crafter: TorchClassifier) -> Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]:
    """``attack@eps`` -> adversarial inputs, crafted on ``crafter`` (the model or a surrogate)."""

    def craft(x: torch.Tensor, y: torch.Tensor, attack: str) -> torch.Tensor:
        name, _, eps_text = attack.partition("@")
        eps = float(eps_text)
        x, y = x.to(crafter.device), y.to(crafter.device)
        if name == "fgsm":
            return fgsm(crafter.module, x, y, eps).cpu()
        if name == "pgd+":
            return pgd(crafter.module, x, y, eps, steps=10, early_stop=False, seed=0).cpu()
        return pgd(crafter.module, x, y, eps, seed=0).cpu()

    return craft


def _store(db: Database, ref: ModelVersionRef, dataset: str, c: Calibration) -> StoredCalibration:
    """Store a calibration and settle any request for it."""
    with db.session() as s:
        row = DetectorCalibration(
            model_name=ref.name,
            model_version=ref.version,
            dataset=dataset,
            fpr=c.thresholds.fpr,
            eps=c.eps,
            thresholds=_finite(c.thresholds.to_dict()),
            baseline=c.baseline,
            report=_finite(c.report()),
        )
        s.add(row)
        s.flush()
        request = s.get(CalibrationRequest, (ref.name, ref.version))
        if request is not None:
            request.status, request.error, request.calibration_id = "done", None, row.id
            request.updated_at = utcnow()
        return _stored(row)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    return value


def _stored(row: DetectorCalibration) -> StoredCalibration:
    thresholds = dict(row.thresholds)
    if thresholds.get("squeeze") is None:
        thresholds["squeeze"] = float("inf")
    return StoredCalibration(
        id=row.id,
        model_name=row.model_name,
        model_version=row.model_version,
        dataset=row.dataset,
        created_at=row.created_at,
        fpr=row.fpr,
        eps=row.eps,
        thresholds=Thresholds.from_dict(thresholds),
        baseline=dict(row.baseline),
        report=dict(row.report),
    )


def current_calibration(db: Database, name: str, version: str) -> StoredCalibration | None:
    """The newest calibration of a model version, if any."""
    with db.session() as s:
        row = s.scalar(
            select(DetectorCalibration)
            .where(
                DetectorCalibration.model_name == name, DetectorCalibration.model_version == version
            )
            .order_by(DetectorCalibration.created_at.desc(), DetectorCalibration.id.desc())
            .limit(1)
        )
        return _stored(row) if row is not None else None


# -- calibration as a job: requested by the ingester, run by the scheduler ---------------------

RETRY_FIRST = timedelta(minutes=1)
RETRY_LONGEST = timedelta(hours=6)
RUNNING_STALE = timedelta(hours=2)  # a "running" request this old died with its process


def request_calibration(db: Database, ref: ModelVersionRef) -> bool:
    """Ask the calibration job to calibrate ``ref``; False when it was asked before."""
    with db.session() as s:
        if s.get(CalibrationRequest, (ref.name, ref.version)) is not None:
            return False
        s.add(CalibrationRequest(model_name=ref.name, model_version=ref.version))
    return True


def retry_delay(attempts: int) -> timedelta:
    """Backoff after ``attempts`` failures: 1 min, 2, 4, … up to 6 h."""
    return min(RETRY_FIRST * 2 ** max(0, attempts - 1), RETRY_LONGEST)


def run_due_calibrations(
    db: Database, registry: Registry, settings: Settings, *, limit: int = 1, device: str = "cpu"
) -> list[str]:
    """Run up to ``limit`` due calibration requests, oldest first; a failure is stored with its
    error and retried after ``retry_delay``. Returns one line per request run."""
    done = []
    for _ in range(limit):
        ref = _claim_due(db)
        if ref is None:
            break
        try:
            stored = calibrate_model(db, registry, settings, ref, device=device)
        except Exception as err:  # stored with the request; the job and ingestion go on
            text = str(err) if isinstance(err, RobmonError) else f"{type(err).__name__}: {err}"
            with db.session() as s:
                request = s.get_one(CalibrationRequest, (ref.name, ref.version))
                request.attempts += 1
                request.status, request.error = "failed", text[:2000]
                request.updated_at = utcnow()
                request.next_attempt_at = utcnow() + retry_delay(request.attempts)
                retry = request.next_attempt_at
            done.append(f"{ref} failed: {text} (retry after {retry:%Y-%m-%d %H:%M} UTC)")
            continue
        done.append(
            f"{ref} calibrated (id {stored.id}, squeezers "
            f"{', '.join(stored.thresholds.squeezers) or 'none'})"
        )
    return done


def is_due(now: datetime) -> Any:
    """The requests the calibration job should run now: pending or failed ones whose time
    has come, and running ones whose process died (no update for ``RUNNING_STALE``)."""
    return (
        CalibrationRequest.status.in_(("pending", "failed"))
        & (CalibrationRequest.next_attempt_at <= now)
    ) | (
        (CalibrationRequest.status == "running")
        & (CalibrationRequest.updated_at < now - RUNNING_STALE)
    )


def _claim_due(db: Database) -> ModelVersionRef | None:
    """Mark the oldest due request running and return its model version."""
    now = utcnow()
    with db.session() as s:
        request = s.scalar(
            select(CalibrationRequest)
            .where(is_due(now))
            .order_by(CalibrationRequest.next_attempt_at)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
        if request is None:
            return None
        request.status, request.updated_at = "running", now
        return ModelVersionRef(request.model_name, request.model_version)
