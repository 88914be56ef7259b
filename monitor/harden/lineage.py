"""Hardened and defended versions of registered models, registered beside their parent and
audited at once:

    resolve the parent -> load it as a torch module -> train it adversarially (harden) or put
    input transformations before it (defend) -> register a new version with lineage tags
    -> audit parent and child with the same configuration (the parent's audit is reused)

Lineage tags: ``robustness.parent`` (NAME/VERSION), ``robustness.method`` (fgsm-rs, pgd or
defend), ``robustness.eps``, ``robustness.epochs``, ``robustness.training_seconds``,
``robustness.transforms``, and the parent's ``robustness.dataset``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from monitor.audit.config import AuditConfig, config_from
from monitor.audit.runner import AuditRequest, run_audit
from monitor.audit.store import AuditDetail
from monitor.classifiers import TorchClassifier
from monitor.datasets import load_dataset
from monitor.db.session import Database
from monitor.errors import AuditError, ModelIncompatible
from monitor.harden.training import EpochStats, Recipe, TrainingResult, adversarial_training
from monitor.harden.transforms import DefendedModel, parse_transform
from monitor.progress import Reporter, silent
from monitor.registry import DATASET_TAG, METHOD_TAG, PARENT_TAG, ModelVersionRef, Registry


@dataclass
class Derived:
    """A new version derived from a parent, and both audits."""

    parent: ModelVersionRef
    child: ModelVersionRef
    parent_audit: AuditDetail
    child_audit: AuditDetail
    training: TrainingResult | None = None
    note: str | None = None


def harden(
    db: Database,
    registry: Registry,
    reference: str,
    recipe: Recipe,
    *,
    dataset: str | None = None,
    audit: AuditConfig | None = None,
    preset: str = "standard",
    on_epoch: Callable[[EpochStats], None] = lambda stats: None,
    report: Reporter = silent,
) -> Derived:
    """Adversarially train a copy of ``reference`` and register it as a new version."""
    parent, classifier = _load_parent(registry, reference, "train")
    data_name = dataset or registry.version_tags(parent).get(DATASET_TAG)
    if not data_name:
        raise AuditError(f"{parent} has no {DATASET_TAG} tag; pass --dataset.")
    train = load_dataset(data_name, "train")
    module = _trainable(classifier.module)
    result = adversarial_training(module, train.x, train.y, recipe, on_epoch)
    tags = {
        PARENT_TAG: f"{parent.name}/{parent.version}",
        METHOD_TAG: recipe.method,
        "robustness.eps": f"{recipe.eps:g}",
        "robustness.epochs": str(recipe.epochs),
        "robustness.clean_ratio": f"{recipe.clean_ratio:g}",
        "robustness.training_seconds": f"{result.seconds:.1f}",
        "robustness.training_mode": "train" if result.train_mode else "eval (pt2 module)",
        DATASET_TAG: registry.version_tags(parent).get(DATASET_TAG) or data_name,
    }
    if recipe.method == "pgd":
        tags["robustness.steps"] = str(recipe.steps)
    example = train.x[:2]
    child = registry.register_torch(module, parent.name, example, tags=tags)
    note = None
    if not result.train_mode:
        note = (
            f"{parent} is a torch.export (pt2) module, which cannot switch to train mode: it was "
            "fine-tuned in eval mode (identical for models without dropout or batch norm; batch "
            "norm statistics stay frozen otherwise)."
        )
    parent_audit, child_audit = _audit_both(
        db, registry, parent, child, tags, audit, report, preset
    )
    return Derived(parent, child, parent_audit, child_audit, result, note)


def defend(
    db: Database,
    registry: Registry,
    reference: str,
    transforms: list[str],
    *,
    audit: AuditConfig | None = None,
    preset: str = "standard",
    report: Reporter = silent,
) -> Derived:
    """Register ``reference`` behind input transformations as a new version (a torch module)."""
    if not transforms:
        raise AuditError("give at least one --transform (jpeg:75, blur:0.5, bits:3, ...).")
    try:
        parts = [parse_transform(t) for t in transforms]
    except ValueError as err:
        raise AuditError(f"{err}.") from None
    parent, classifier = _load_parent(registry, reference, "defend")
    shape = classifier.input_shape or _shape_from_dataset(registry, parent)
    model = DefendedModel(classifier.module, parts, shape)
    tags = {
        PARENT_TAG: f"{parent.name}/{parent.version}",
        METHOD_TAG: "defend",
        "robustness.transforms": ",".join(t.spec for t in parts),
    }
    dataset = registry.version_tags(parent).get(DATASET_TAG)
    if dataset:
        tags[DATASET_TAG] = dataset
    child = registry.register_torch(
        model, parent.name, torch.rand(2, *shape), tags=tags, serialization_format="pickle"
    )
    parent_audit, child_audit = _audit_both(
        db, registry, parent, child, tags, audit, report, preset
    )
    return Derived(parent, child, parent_audit, child_audit)


def _load_parent(
    registry: Registry, reference: str, verb: str
) -> tuple[ModelVersionRef, TorchClassifier]:
    parent = registry.resolve(reference)
    classifier = registry.load(parent)
    if not isinstance(classifier, TorchClassifier):
        raise ModelIncompatible(
            f"{parent} is not a torch model: only torch models can be {verb}ed here "
            "(retrain a black box with your own pipeline)."
        )
    return parent, classifier


def _trainable(module: torch.nn.Module) -> torch.nn.Module:
    """The freshly loaded parent, its parameters training (the registered parent is untouched)."""
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def _shape_from_dataset(registry: Registry, ref: ModelVersionRef) -> tuple[int, ...]:
    dataset = registry.version_tags(ref).get(DATASET_TAG)
    if not dataset:
        raise ModelIncompatible(f"{ref} has no input signature and no {DATASET_TAG} tag.")
    return tuple(load_dataset(dataset).x.shape[1:])


def _audit_both(
    db: Database,
    registry: Registry,
    parent: ModelVersionRef,
    child: ModelVersionRef,
    tags: dict[str, str],
    config: AuditConfig | None,
    report: Reporter,
    preset: str = "standard",
) -> tuple[AuditDetail, AuditDetail]:
    """Parent first (reused when it exists), so that the child's checks compare against it."""
    if config is None:
        dataset = tags.get(DATASET_TAG)
        if not dataset:
            raise AuditError(f"{parent} has no {DATASET_TAG} tag to audit on; pass --dataset.")
        # gate-grade: a weak attack would inflate the robustness the training claims to add
        config = config_from({"preset": preset}, {"dataset": dataset})
    parent_audit = run_audit(db, registry, AuditRequest(parent.uri, config, "harden"), report)
    child_audit = run_audit(db, registry, AuditRequest(child.uri, config, "harden"), report)
    return parent_audit.detail, child_audit.detail
