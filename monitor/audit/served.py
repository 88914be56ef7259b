"""Audits of a model known only by its HTTP endpoint (``robmon audit --endpoint URL``): what a
real attacker gets by sending queries, without the registry.

    check the URL -> config (query attacks; transfer too with --surrogate) -> reuse or claim
    -> load data -> measure (Square through the endpoint, batched, rate-limited) -> check
    -> score -> store

The audit is stored under the endpoint's name (``host:port/path``) and version ``endpoint``; no
MLflow run or tag is written (there is no registered version to tag). The number of requests
and queries sent is kept in ``run_info["endpoint"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from monitor.audit import store
from monitor.audit.checks import run_checks
from monitor.audit.config import QUERY_ATTACKS, AuditConfig
from monitor.audit.measure import Attackers, measure
from monitor.audit.runner import AuditOutcome, failure_message, render_artifacts, run_info
from monitor.audit.score import robustness_score
from monitor.classifiers import BlackBoxClassifier, TorchClassifier
from monitor.datasets import dataset_digest, load_dataset
from monitor.db.session import Database
from monitor.endpoint import endpoint_classifier
from monitor.errors import AuditError, ModelIncompatible
from monitor.progress import Reporter, silent
from monitor.registry import ModelVersionRef, Registry

ENDPOINT_VERSION = "endpoint"


@dataclass(frozen=True)
class EndpointRequest:
    url: str
    config: AuditConfig
    layout: str = "nchw"
    batch_size: int = 256  # queries per HTTP request
    rate_limit: float | None = None  # requests per second
    timeout: float = 30.0
    force: bool = False
    trigger: str = "cli"


@dataclass(frozen=True)
class EndpointPlan:
    """What the endpoint audit needs once planned; ``ref`` names it for reports."""

    ref: ModelVersionRef
    config: AuditConfig


def run_endpoint_audit(
    db: Database,
    registry: Registry,
    request: EndpointRequest,
    report: Reporter = silent,
) -> AuditOutcome:
    """Attack a served model by queries (and by transfer with a surrogate); reuse a stored
    audit of the same endpoint and configuration unless ``force``."""
    if not set(request.config.attacks) & set(QUERY_ATTACKS) and not request.config.surrogate:
        raise AuditError(
            "an endpoint answers queries only: audit it with --preset standard (Square) or "
            "--attack square, or pass --surrogate MODEL for transfer attacks."
        )
    target = endpoint_classifier(
        request.url,
        layout=request.layout,
        batch_size=request.batch_size,
        rate_limit=request.rate_limit,
        timeout=request.timeout,
    )
    data = load_dataset(request.config.dataset).head(request.config.limit)
    config = request.config.with_input_kind(data.image_shape[0])
    surrogate = str(registry.resolve(config.surrogate)) if config.surrogate else None
    config = replace(config, surrogate=surrogate, dataset_digest=dataset_digest(config.dataset))
    plan = EndpointPlan(ModelVersionRef(target.name, ENDPOINT_VERSION), config)
    if not request.force:
        existing = store.find_reusable(db, plan.ref.name, plan.ref.version, config.hash())
        if existing is not None:
            return AuditOutcome(store.get_audit(db, existing), reused=True)
    audit_id = store.create(
        db,
        name=plan.ref.name,
        version=plan.ref.version,
        dataset=config.dataset,
        config=config.canonical(),
        config_hash=config.hash(),
        trigger=request.trigger,
    )
    try:
        attackers = Attackers(target, _surrogate(registry, surrogate))
        store.mark_running(db, audit_id, kind="endpoint", device="cpu", surrogate=surrogate)
        m = measure(attackers, data.x, data.y, config, report=report)
        info = _run_info(plan, target, m, len(data.classes))
        checks, score = run_checks(m), robustness_score(m.cells)
        artifacts = render_artifacts(plan, m, score)
        store.save_success(db, audit_id, m, checks, score, artifacts, run_info=info)
    except KeyboardInterrupt:
        store.mark_ended(db, audit_id, "interrupted", "interrupted before it finished")
        raise
    except Exception as err:
        message = failure_message(err, "the endpoint", request.batch_size)
        store.mark_ended(db, audit_id, "failed", message)
        raise AuditError(f"audit {audit_id} of {request.url} failed: {message}") from err
    return AuditOutcome(store.get_audit(db, audit_id), reused=False)


def _surrogate(registry: Registry, surrogate: str | None) -> TorchClassifier | None:
    if surrogate is None:
        return None
    name, version = surrogate.rsplit("/", 1)
    model = registry.load(ModelVersionRef(name, version))
    if not isinstance(model, TorchClassifier):
        raise ModelIncompatible(
            f"surrogate {surrogate} is not a torch model; transfer attacks are crafted with "
            "gradients."
        )
    return model


def _run_info(plan: EndpointPlan, target: BlackBoxClassifier, m, classes: int) -> dict:
    """The registry audit's run_info (``runner.run_info``), plus what was sent to the server."""
    client = target.predict_fn
    info = run_info(plan, target, m, classes)
    info["endpoint"] = {"url": client.url, "requests": client.requests, "queries": client.queries}
    return info
