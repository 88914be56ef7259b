"""A gate decision, as named steps:

    resolve the version -> find (or run) the audit matching the policy -> resolve the baseline
    and its matching audit -> evaluate each criterion -> verdict -> record, tag, promote

Verdicts: passed (exit 0), failed (1), undecided (2: a missing audit or calibration, recorded
with its reason). Every criterion reports its value, threshold, baseline value, outcome and a
one-line reason; criteria that cannot apply (no baseline) are skipped and say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from monitor.audit import store as audits
from monitor.audit.checks import tolerance
from monitor.audit.config import preset_text, stored_preset
from monitor.audit.runner import AuditRequest, Plan, make_plan, run_audit
from monitor.audit.store import AuditDetail
from monitor.calibrate import current_calibration
from monitor.db.session import Database
from monitor.db.types import utcnow
from monitor.errors import ModelNotFound, PolicyError, RobmonError
from monitor.gate.policy import Policy
from monitor.progress import Reporter, silent
from monitor.registry import DATASET_TAG, ModelVersionRef, Registry

EXIT_CODES = {"passed": 0, "failed": 1, "undecided": 2}


class GateUndecided(RobmonError):
    """Raised when the gate cannot decide (missing audit or calibration); exit status 2."""

    exit_code = 2


@dataclass
class Criterion:
    name: str
    actual: float | None
    threshold: float | str | None
    baseline: float | None
    passed: bool | None  # None: skipped
    reason: str


@dataclass
class Decision:
    model: ModelVersionRef
    verdict: str
    reason: str
    criteria: list[Criterion] = field(default_factory=list)
    audit_id: int | None = None
    preset: str | None = None  # of the audit decided on: quick, standard, thorough or custom
    baseline: ModelVersionRef | None = None
    baseline_audit_id: int | None = None
    policy_hash: str = ""
    decided_at: datetime = field(default_factory=utcnow)
    decided_by: str = ""
    promoted_alias: str | None = None
    previous_version: str | None = None
    decision_id: int | None = None

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


@dataclass
class GateRun:
    """What a gate run needs besides the policy."""

    db: Database
    registry: Registry
    audit_if_missing: bool = False
    queue_if_missing: bool = False  # a deployment: workers run audits, the gate waits for them
    baseline: str | None = None
    device: str | None = None
    report: Reporter = silent


def evaluate(run: GateRun, reference: str, policy: Policy) -> Decision:
    """Decide on one model version (no record, no promotion: see ``gate.record``)."""
    ref = run.registry.resolve(reference)
    decision = Decision(
        model=ModelVersionRef(ref.name, ref.version),
        verdict="undecided",
        reason="",
        policy_hash=policy.hash,
    )
    try:
        audit = _matching_audit(run, ref, policy, "candidate")
        decision.audit_id, decision.preset = audit.id, stored_preset(audit.config)
        baseline_ref = _baseline(run, ref, policy)
        baseline_audit = None
        if baseline_ref is not None and policy.has_baseline_criteria:
            baseline_audit = _matching_audit(run, baseline_ref, policy, "baseline")
            decision.baseline, decision.baseline_audit_id = baseline_ref, baseline_audit.id
        decision.criteria = criteria(run, policy, ref, audit, baseline_ref, baseline_audit)
    except GateUndecided as err:
        decision.reason = str(err)
        return decision
    failed = [c for c in decision.criteria if c.passed is False]
    decision.verdict = "failed" if failed else "passed"
    decision.reason = (
        "failed: " + "; ".join(c.reason for c in failed)
        if failed
        else f"passed all {sum(c.passed is True for c in decision.criteria)} criteria"
    )
    return decision


def _matching_audit(run: GateRun, ref: ModelVersionRef, policy: Policy, role: str) -> AuditDetail:
    """The stored audit of ``ref`` whose configuration matches the policy (run if allowed)."""
    dataset = run.registry.version_tags(ref).get(DATASET_TAG)
    plan: Plan = make_plan(run.registry, ref.uri, policy.audit_config(dataset))
    existing = audits.find_reusable(run.db, ref.name, ref.version, plan.config_hash)
    if existing is not None:
        return audits.get_audit(run.db, existing)
    if run.queue_if_missing and not run.audit_if_missing:
        from monitor.audit import queue

        queued = queue.enqueue(run.db, plan, "gate")
        raise GateUndecided(
            f"no audit of the {role} {ref} matches the policy: "
            + (f"queued it as audit {queued}" if queued else "it is queued or running already")
            + "; run the gate again when a worker has finished it."
        )
    if not run.audit_if_missing:
        c = plan.config
        eps = ", ".join(f"{e:g}" for n in c.norms for e in c.eps_for(n))
        raise GateUndecided(
            f"no audit of the {role} {ref} matches the policy (dataset {c.dataset}, "
            f"{preset_text(c)}, {'/'.join(c.norms)} eps {eps}); run it with `robmon audit` "
            "or pass --audit-if-missing."
        )
    request = AuditRequest(ref.uri, plan.config, trigger="gate", device=run.device)
    return run_audit(run.db, run.registry, request, run.report).detail


def _baseline(run: GateRun, ref: ModelVersionRef, policy: Policy) -> ModelVersionRef | None:
    reference = run.baseline or policy.baseline_reference or "champion"
    if "/" not in reference and "@" not in reference and ":" not in reference:
        reference = f"models:/{ref.name}@{reference}"  # an alias of the same model
    try:
        baseline = run.registry.resolve(reference)
    except ModelNotFound:
        return None
    return ModelVersionRef(baseline.name, baseline.version)


def criteria(
    run: GateRun,
    policy: Policy,
    ref: ModelVersionRef,
    audit: AuditDetail,
    baseline: ModelVersionRef | None,
    baseline_audit: AuditDetail | None,
) -> list[Criterion]:
    """Every criterion of the policy, in a fixed order."""
    found: list[Criterion] = []
    for check in CRITERIA:
        found.extend(check(run, policy, ref, audit, baseline, baseline_audit))
    return found


def _at_least(name: str, actual: float | None, floor: float, what: str) -> Criterion:
    if actual is None:
        return Criterion(name, None, floor, None, False, f"{what} is missing from the audit")
    ok = actual >= floor
    verb = "is at least" if ok else "is below"
    return Criterion(name, actual, floor, None, ok, f"{what} {actual:.4g} {verb} {floor:.4g}")


def _clean(run, policy, ref, audit, baseline, baseline_audit) -> list[Criterion]:
    if policy.min_clean_accuracy is None:
        return []
    return [
        _at_least(
            "min_clean_accuracy", audit.clean_accuracy, policy.min_clean_accuracy, "clean accuracy"
        )
    ]


def _score(run, policy, ref, audit, baseline, baseline_audit) -> list[Criterion]:
    if policy.min_score is None:
        return []
    return [_at_least("min_score", audit.score, policy.min_score, "robustness score")]


def _cells(audit: AuditDetail) -> dict[tuple[str, str, float], float]:
    """(attack, norm, eps) -> the lowest robust accuracy over threats; attack ``worst`` is the
    lowest over every attack (a chained audit's worst case per sample)."""
    cells: dict[tuple[str, str, float], float] = {}
    for r in audit.results:
        for key in ((r.attack, r.norm, r.eps), ("worst", r.norm, r.eps)):
            cells[key] = min(cells.get(key, 1.0), r.robust_accuracy)
    return cells


def _robust(run, policy, ref, audit, baseline, baseline_audit) -> list[Criterion]:
    cells = _cells(audit)
    out = []
    for floor in policy.min_robust_accuracy:
        key = (floor.attack, floor.norm, floor.eps)
        if key not in cells:
            raise PolicyError(
                f"policy: criteria.min_robust_accuracy asks for {floor.attack} {floor.norm} eps "
                f"{floor.eps:g}, which the policy's [audit] does not measure."
            )
        out.append(
            _at_least(
                f"min_robust_accuracy[{floor.attack} {floor.norm} {floor.eps:g}]",
                cells[key],
                floor.value,
                f"{floor.attack.upper()} {floor.norm} eps {floor.eps:g} robust accuracy",
            )
        )
    return out


def _credibility(run, policy, ref, audit, baseline, baseline_audit) -> list[Criterion]:
    if policy.credibility is None:
        return []
    allowed = set() if policy.credibility == "must-pass" else set(policy.credibility)
    warnings = [c.name for c in audit.checks if c.status == "warning"]
    blocking = [w for w in warnings if w not in allowed]
    threshold = "must-pass" if not allowed else "may warn: " + ", ".join(sorted(allowed))
    if blocking:
        details = "; ".join(c.detail for c in audit.checks if c.name in blocking)
        return [
            Criterion(
                "credibility",
                len(blocking),
                threshold,
                None,
                False,
                f"credibility warnings {', '.join(blocking)}: {details}",
            )
        ]
    return [
        Criterion(
            "credibility",
            0,
            threshold,
            None,
            True,
            f"credibility checks passed ({len(warnings)} allowed warning(s))",
        )
    ]


def _age(run, policy, ref, audit, baseline, baseline_audit) -> list[Criterion]:
    if policy.max_audit_age is None:
        return []
    finished = audit.finished_at or audit.created_at
    age = utcnow() - finished
    days, limit = age.total_seconds() / 86400, policy.max_audit_age.total_seconds() / 86400
    ok = age <= policy.max_audit_age
    return [
        Criterion(
            "max_audit_age",
            round(days, 3),
            limit,
            None,
            ok,
            f"audit {audit.id} is {days:.1f} days old "
            f"({'within' if ok else 'over'} the {limit:g}-day limit)",
        )
    ]


def _detection(run, policy, ref, audit, baseline, baseline_audit) -> list[Criterion]:
    floor = policy.min_detection_rate
    if floor is None:
        return []
    calibration = current_calibration(run.db, ref.name, ref.version)
    if calibration is None:
        raise GateUndecided(f"{ref} has no detector calibration; run `robmon calibrate {ref.uri}`.")
    rate = next(
        (
            _attack_rate(d, floor.attack)
            for d in calibration.report["detectors"]
            if d["detector"] == floor.detector
        ),
        None,
    )
    criterion = _at_least(
        f"min_detection_rate[{floor.detector} {floor.attack}]",
        rate,
        floor.value,
        f"{floor.detector} detection of {floor.attack.upper()} at FPR {calibration.fpr:.0%}",
    )
    return [criterion]


def _attack_rate(detector: dict[str, Any], attack: str) -> float | None:
    """One attack's detection rate, pooled over the calibration's strengths (``pgd@0.1``,
    ``pgd@0.2``, ...: flagged of all successful examples); calibrations before the strength
    grid name the attack alone."""
    counts = [
        hits_of
        for name, hits_of in (detector.get("detected") or {}).items()
        if name.partition("@")[0] == attack
    ]
    if counts:
        total = sum(n for _, n in counts)
        return sum(h for h, _ in counts) / total if total else None
    return detector["detection_rate"].get(attack)


def _drops(run, policy, ref, audit, baseline, baseline_audit) -> list[Criterion]:
    if not policy.has_baseline_criteria:
        return []
    if baseline is None:
        target = run.baseline or policy.baseline_reference or "champion"
        return [
            Criterion(
                "baseline",
                None,
                None,
                None,
                None,
                f"no baseline ({target} does not exist: a first version?); baseline "
                "criteria skipped",
            )
        ]
    if baseline == ref:
        return [
            Criterion(
                "baseline",
                None,
                None,
                None,
                None,
                f"the baseline {baseline} is this version; baseline criteria skipped",
            )
        ]
    if baseline_audit is None:  # not reached: a baseline with baseline criteria has its audit
        raise GateUndecided(f"no audit of the baseline {baseline} was found.")
    pairs: list[tuple[str, str, float | None, float | None]] = [
        ("score", "robustness score", audit.score, baseline_audit.score)
    ]
    mine, theirs = _cells(audit), _cells(baseline_audit)
    for key in sorted(mine):
        if key in theirs:
            label = f"{key[0].upper()} {key[1]} eps {key[2]:g} robust accuracy"
            pairs.append(("robust_accuracy", label, mine[key], theirs[key]))
    noise = tolerance(audit.n_samples or 0)  # as the credibility checks: max(0.02, 3/n)
    out = []
    for metric, label, actual, base in pairs:
        if actual is None or base is None:
            continue
        drop = base - actual
        slack = noise * (100 if metric == "score" else 1)
        if drop <= slack:  # within sampling noise: never a regression
            for key in ("max_absolute_drop", "max_relative_drop"):
                limit = getattr(policy, key).get(metric)
                if limit is not None:
                    out.append(
                        Criterion(
                            f"{key}[{label}]",
                            actual,
                            limit,
                            base,
                            True,
                            f"{label} {actual:.4g} against {base:.4g} on "
                            f"{baseline}: within sampling noise ({slack:.3g})",
                        )
                    )
            continue
        limit = policy.max_absolute_drop.get(metric)
        if limit is not None:
            out.append(
                Criterion(
                    f"max_absolute_drop[{label}]",
                    actual,
                    limit,
                    base,
                    drop <= limit,
                    f"{label} {actual:.4g} against {base:.4g} on "
                    f"{baseline}: a drop of {drop:.4g} (at most {limit:g})",
                )
            )
        limit = policy.max_relative_drop.get(metric)
        if limit is not None:
            relative = drop / base if base > 0 else 0.0
            out.append(
                Criterion(
                    f"max_relative_drop[{label}]",
                    actual,
                    limit,
                    base,
                    relative <= limit,
                    f"{label} {actual:.4g} against {base:.4g} "
                    f"on {baseline}: a relative drop of {relative:.1%} (at most "
                    f"{limit:.1%})",
                )
            )
    return out


CRITERIA: tuple[Callable[..., list[Criterion]], ...] = (
    _clean,
    _score,
    _robust,
    _credibility,
    _age,
    _detection,
    _drops,
)


def as_dict(decision: Decision) -> dict[str, Any]:
    return {
        "decision_id": decision.decision_id,
        "model": {"name": decision.model.name, "version": decision.model.version},
        "verdict": decision.verdict,
        "exit_code": decision.exit_code,
        "reason": decision.reason,
        "policy_hash": decision.policy_hash,
        "audit_id": decision.audit_id,
        "preset": decision.preset,
        "baseline": str(decision.baseline) if decision.baseline else None,
        "baseline_audit_id": decision.baseline_audit_id,
        "criteria": [c.__dict__ for c in decision.criteria],
        "decided_at": decision.decided_at,
        "decided_by": decision.decided_by,
        "promoted_alias": decision.promoted_alias,
        "previous_version": decision.previous_version,
    }
