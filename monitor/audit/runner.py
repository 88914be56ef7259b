"""An audit, as a sequence of named steps:

    resolve the reference -> plan (surrogate, config hash) -> reuse or claim -> load models
    -> load data -> measure -> check -> score -> store -> write back to MLflow

Failures are recorded on the audit (failed, or interrupted) with their error before they
propagate; partial results are never stored as a finished audit.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, is_dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from monitor.audit import store
from monitor.audit.checks import near_chance, run_checks
from monitor.audit.config import (
    GRADIENT_ATTACKS,
    QUERY_ATTACKS,
    AuditConfig,
    cell_key,
    preset_text,
)
from monitor.audit.measure import Attackers, Baseline, Measurements, measure
from monitor.audit.memory import BatchSize
from monitor.audit.report import example_gallery, robust_accuracy_plot
from monitor.audit.score import robustness_score
from monitor.audit.store import AuditDetail
from monitor.audit.writeback import tag_failure, write_back
from monitor.classifiers import Classifier, TorchClassifier
from monitor.contracts import CONTRACT_TAG
from monitor.datasets import Dataset, dataset_digest, load_dataset
from monitor.db.session import Database
from monitor.errors import AuditError, ModelIncompatible, ModelNotFound, RobmonError
from monitor.progress import Reporter, silent
from monitor.registry import PARENT_TAG, ModelVersionRef, Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditRequest:
    reference: str
    config: AuditConfig
    trigger: str = "cli"
    force: bool = False
    device: str | None = None
    batch_size: BatchSize | int | str = "auto"  # measured against the free memory
    requested_by: str | None = None
    fast: bool = False  # CUDA only: craft with compile + bf16 + channels_last


@dataclass
class AuditOutcome:
    detail: AuditDetail
    reused: bool


@dataclass(frozen=True)
class Plan:
    """A resolved audit: the exact version and a config whose surrogate is a version too."""

    ref: ModelVersionRef
    config: AuditConfig

    @property
    def config_hash(self) -> str:
        return self.config.hash()


def run_audit(
    db: Database, registry: Registry, request: AuditRequest, report: Reporter = silent
) -> AuditOutcome:
    """Audit a model version now, or return the stored audit with the same configuration."""
    device = pick_device(request.device)
    if request.fast and device.type != "cuda":
        raise AuditError("--fast needs a CUDA device (compile + bf16 + channels_last).")
    data = load_dataset(request.config.dataset).head(request.config.limit)  # bad: no audit row
    plan = make_plan(registry, request.reference, request.config, data)
    if not request.force:
        existing = store.find_reusable(db, plan.ref.name, plan.ref.version, plan.config_hash)
        if existing is not None:
            return AuditOutcome(store.get_audit(db, existing), reused=True)
    audit_id = store.create(
        db,
        name=plan.ref.name,
        version=plan.ref.version,
        dataset=plan.config.dataset,
        config=plan.config.canonical(),
        config_hash=plan.config_hash,
        trigger=request.trigger,
        requested_by=request.requested_by,
    )
    detail = execute(
        db, registry, audit_id, plan, device, request.batch_size, report, data, fast=request.fast
    )
    return AuditOutcome(detail, reused=False)


def make_plan(
    registry: Registry, reference: str, config: AuditConfig, data: Dataset | None = None
) -> Plan:
    """Resolve the model and, for black boxes (or when asked), the transfer surrogate; without
    an eps grid, the input kind that picks the default one (from the dataset's channels)."""
    ref = registry.resolve(reference)
    if config.eps is None and config.input_kind is None:
        channels = data.image_shape[0] if data is not None else dataset_channels(config.dataset)
        config = config.with_input_kind(channels)
    contract = registry.input_contract(ref)
    config = replace(
        config, input_contract=contract.key(), dataset_digest=dataset_digest(config.dataset)
    )
    surrogate = None
    if config.surrogate:
        surrogate = str(registry.resolve(config.surrogate))
    elif "pytorch" not in registry.flavors(ref):
        if not set(config.attacks) & set(GRADIENT_ATTACKS):
            pass  # query attacks only: no surrogate needed
        elif set(config.attacks) & set(QUERY_ATTACKS):  # a transfer baseline where one exists
            with contextlib.suppress(ModelNotFound):
                surrogate = str(registry.find_surrogate(config.dataset, exclude=ref.name))
        else:
            surrogate = str(registry.find_surrogate(config.dataset, exclude=ref.name))
    elif contract.scale == "uint8" and registry.input_signature(ref)[1] == "uint8":
        # a torch module declared uint8 may refuse floats (then it is a black box): a
        # transfer baseline beside the white-box attacks, where a surrogate is registered
        with contextlib.suppress(ModelNotFound):
            surrogate = str(registry.find_surrogate(config.dataset, exclude=ref.name))
    return Plan(ref, config.with_surrogate(surrogate))


def dataset_channels(spec: str) -> int:
    """Channels of a dataset's images (read once per file version: the scheduler plans often)."""
    path = Path(spec).expanduser()
    return _channels(spec, path.stat().st_mtime if path.exists() else None)


@lru_cache(maxsize=32)
def _channels(spec: str, _mtime: float | None) -> int:
    return load_dataset(spec).image_shape[0]


def plan_from_row(name: str, version: str, config: dict) -> Plan:
    """The plan of a stored (queued) audit, with the same configuration hash.

    A stored ``input_kind`` means the default grid of that kind (which may differ per norm);
    otherwise the stored grid was given explicitly, one for every norm."""
    fields = {k: v for k, v in config.items() if k in AuditConfig.__dataclass_fields__}
    fields["attacks"], fields["norms"] = tuple(fields["attacks"]), tuple(fields["norms"])
    eps = config["eps"]
    if fields.get("input_kind") is not None:
        fields["eps"] = None
    else:
        fields["eps"] = tuple(sorted({e for values in eps.values() for e in values}))
        if len({tuple(v) for v in eps.values()}) > 1:
            raise AuditError(
                "stored audit uses a different eps grid per norm; re-run it from the CLI."
            )
    plan = Plan(ModelVersionRef(name, version), AuditConfig(**fields))
    if plan.config.eps_grid() != {n: list(eps[n]) for n in plan.config.norms}:
        raise AuditError(
            f"stored audit of {name}/{version} uses an eps grid this version of robmon does not "
            "rebuild; re-run it from the CLI."
        )
    return plan


def execute(
    db: Database,
    registry: Registry,
    audit_id: int,
    plan: Plan,
    device: torch.device | str | None = None,
    batch_size: BatchSize | int | str = "auto",
    report: Reporter = silent,
    data: Dataset | None = None,
    *,
    fast: bool = False,
) -> AuditDetail:
    """Run a claimed audit to the end: succeeded, or failed/interrupted with its error."""
    try:
        target_device = device if isinstance(device, torch.device) else pick_device(device)
        attackers = load_attackers(registry, plan, target_device, fast=fast)
        store.mark_running(
            db,
            audit_id,
            kind=attackers.target.kind,
            device=f"{target_device} (fast)" if fast else str(target_device),
            surrogate=plan.config.surrogate,
            run_info=run_info(plan, attackers.target),
        )
        if data is None:
            data = load_dataset(plan.config.dataset).head(plan.config.limit)
        measurements = measure(
            attackers, data.x, data.y, plan.config, batch_size=batch_size, report=report
        )
        info = run_info(plan, attackers.target, measurements, len(data.classes))
        if measurements.probes.defence is not None:
            measurements.baseline = parent_baseline(db, registry, plan)
        checks = run_checks(measurements)
        score = robustness_score(measurements.cells)
        artifacts = render_artifacts(plan, measurements, score)
        store.save_success(db, audit_id, measurements, checks, score, artifacts, run_info=info)
        detail = store.get_audit(db, audit_id)
    except KeyboardInterrupt:
        store.mark_ended(db, audit_id, "interrupted", "interrupted before it finished")
        raise
    except Exception as err:
        message = failure_message(err, device, batch_size)
        store.mark_ended(db, audit_id, "failed", message)
        _tag_failure_quietly(registry, db, audit_id)
        raise AuditError(f"audit {audit_id} of {plan.ref} failed: {message}") from err
    _write_back(db, registry, detail, artifacts)
    return store.get_audit(db, audit_id)


def pick_device(device: str | None) -> torch.device:
    """CUDA when available unless told otherwise; a clear error for CUDA without a GPU."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AuditError("CUDA is not available on this machine; use --device cpu.")
    try:
        return torch.device(device)
    except RuntimeError:
        raise AuditError(f"--device takes cpu or cuda (or cuda:N), not {device!r}.") from None


def load_attackers(
    registry: Registry, plan: Plan, device: torch.device, *, fast: bool = False
) -> Attackers:
    """The target and the surrogate; with ``fast``, their crafting modules are accelerated."""
    if fast and device.type != "cuda":
        raise AuditError("--fast needs a CUDA device (compile + bf16 + channels_last).")
    target = registry.load(plan.ref, device)
    surrogate = None
    if plan.config.surrogate:
        name, version = plan.config.surrogate.rsplit("/", 1)
        surrogate = registry.load(ModelVersionRef(name, version), device)
        if not isinstance(surrogate, TorchClassifier):
            raise ModelIncompatible(
                f"surrogate {plan.config.surrogate} is not a torch model; transfer attacks are "
                "crafted with gradients."
            )
    queries = bool(set(plan.config.attacks) & set(QUERY_ATTACKS))
    if not isinstance(target, TorchClassifier) and surrogate is None and not queries:
        raise ModelIncompatible(
            f"{plan.ref} is a black box and no surrogate was found; pass --surrogate MODEL (a "
            "torch model trained on the same data) to attack it by transfer, or --preset "
            "standard to attack it by queries (Square)."
        )
    if isinstance(target, TorchClassifier) and plan.config.adaptive:
        from monitor.harden.transforms import DefendedModel

        if isinstance(target.module, DefendedModel):  # BPDA and EOT through the defence
            target.attack_module = target.module.attack_view(plan.config.eot_samples)
    if fast:
        from monitor.attacks.fast import accelerate

        for model in (target, surrogate):
            if isinstance(model, TorchClassifier):
                model.attack_module = accelerate(model.module)
    return Attackers(target=target, surrogate=surrogate)


def run_info(
    plan: Plan,
    target: Classifier,
    measurements: Measurements | None = None,
    dataset_classes: int | None = None,
) -> dict[str, Any]:
    """How the audit ran beside its configuration: the target's input contract, the eps grid
    and why, the batch size measure() settled on, and a hint when the contract looks wrong."""
    info: dict[str, Any] = {
        "contract": target.contract.as_dict(),
        "eps": {"grid": plan.config.eps_grid(), "why": plan.config.eps_why()},
        "preset": {
            "name": plan.config.preset,
            "text": preset_text(plan.config),
            "chain": plan.config.chain,
        },
    }
    if measurements is None:
        return info
    queries = {cell_key(c): c.queries for c in measurements.cells if c.queries}
    if queries:
        info["queries"] = queries
    batch = getattr(measurements, "batch", None)
    if batch is not None:
        info["batch"] = asdict(batch) if is_dataclass(batch) else batch
    n_classes = measurements.n_classes or dataset_classes
    hint = contract_hint(plan.ref, target, measurements.clean_accuracy, n_classes)
    if hint is not None:
        log.warning("audit of %s: %s", plan.ref, hint)
        info["contract"]["warning"] = hint
    return info


def contract_hint(
    ref: ModelVersionRef, target: Classifier, clean_accuracy: float, n_classes: int | None
) -> str | None:
    """One sentence when the clean accuracy is near chance (``checks.near_chance``): the usual
    cause is an input contract that does not match the model (scale, layout, mean, std)."""
    if not n_classes or not near_chance(clean_accuracy, n_classes):
        return None
    return (
        f"clean accuracy {clean_accuracy:.3f} is near chance for {n_classes} classes: check the "
        f"input contract of {ref} (scale, layout, mean and std; tag {CONTRACT_TAG}), which is "
        f"now {target.contract.text()}."
    )


def parent_baseline(db: Database, registry: Registry, plan: Plan) -> Baseline | None:
    """The succeeded audit of the version this one was derived from (tag robustness.parent),
    with the same configuration; None when there is none."""
    parent = registry.version_tags(plan.ref).get(PARENT_TAG)
    if not parent or "/" not in parent:
        return None
    name, version = parent.rsplit("/", 1)
    contract = registry.input_contract(ModelVersionRef(name, version)).key()
    parent_hash = replace(plan.config, input_contract=contract).hash()  # the parent's own input
    audit_id = store.find_reusable(db, name, version, parent_hash)
    if audit_id is None:
        return None
    audit = store.get_audit(db, audit_id)
    return Baseline(
        label=f"{name} v{version}",
        clean_accuracy=audit.clean_accuracy or 0.0,
        robust=audit.robust_by_cell(),
    )


def render_artifacts(
    plan: Plan, m: Measurements, score: float | None
) -> dict[str, tuple[str, bytes]]:
    """The robust-accuracy plot and the example gallery, as (content type, PNG bytes)."""
    title = f"{plan.ref.name} v{plan.ref.version} on {plan.config.dataset}"
    if score is not None:
        title += f"  (score {score:.1f})"
    artifacts = {
        "robust_accuracy.png": ("image/png", robust_accuracy_plot(m.cells, m.clean_accuracy, title))
    }
    cells = [c for c in m.cells if c.examples]
    if cells:
        norm = cells[0].norm
        grid = sorted({c.eps for c in cells if c.norm == norm})
        middle = grid[len(grid) // 2]
        cell = min(
            (c for c in cells if c.norm == norm and c.eps == middle),
            key=lambda c: c.robust_accuracy,
        )
        caption = (
            f"{plan.ref.name} v{plan.ref.version}: {cell.threat} {cell.attack.upper()} "
            f"{norm} eps {cell.eps:g}"
        )
        artifacts["examples.png"] = ("image/png", example_gallery(cell.examples, caption))
    return artifacts


def failure_message(err: BaseException, device: object, batch_size: object) -> str:
    """One sentence for the audit's error column."""
    if isinstance(err, torch.OutOfMemoryError):
        return (
            f"out of memory on {device or 'the device'} at batch size {batch_size}; "
            "lower --batch-size."
        )
    if isinstance(err, MemoryError):
        return f"out of memory at batch size {batch_size}; lower --batch-size."
    if isinstance(err, RobmonError):
        return str(err)
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err) else ''}"


def _tag_failure_quietly(registry: Registry, db: Database, audit_id: int) -> None:
    try:
        tag_failure(registry, store.get_audit(db, audit_id))
    except RobmonError as err:
        log.warning("could not tag the failed audit %s in MLflow: %s", audit_id, err)


def _write_back(
    db: Database, registry: Registry, detail: AuditDetail, artifacts: dict[str, tuple[str, bytes]]
) -> None:
    """MLflow write-back; a failure is kept on the audit (its numbers stay valid)."""
    try:
        run_id = write_back(registry, detail, {k: v for k, (_, v) in artifacts.items()})
        store.set_writeback(db, detail.id, run_id, None)
    except RobmonError as err:
        log.warning("audit %s: MLflow write-back failed: %s", detail.id, err)
        store.set_writeback(db, detail.id, None, str(err))
