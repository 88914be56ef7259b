"""Gate policies: the audit a decision needs and the criteria it applies.

    [audit]                      the audit configuration (as `robmon audit`)
    [criteria]                   min_clean_accuracy, min_score, credibility, max_audit_age,
                                 min_robust_accuracy = [{attack, norm, eps, value}, ...],
                                 min_detection_rate = {detector, attack, value}
    [baseline]                   reference (default NAME@champion), max_absolute_drop =
                                 {score, robust_accuracy}, max_relative_drop (number or table)

Every problem is a PolicyError naming the key, and the gate exits 2 (could not decide).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from monitor.audit.config import AuditConfig, audit_defaults, config_from, merge_levels
from monitor.errors import AuditError, PolicyError, RobmonError
from monitor.times import parse_duration

DETECTORS = ("confidence", "squeezing", "combined")
DEFAULT_PRESET = "standard"  # a policy that names no preset or attacks gates on gate-grade audits
_TOP = {"audit", "criteria", "baseline"}
_CRITERIA = {
    "min_clean_accuracy",
    "min_score",
    "credibility",
    "max_audit_age",
    "min_robust_accuracy",
    "min_detection_rate",
}
_BASELINE = {"reference", "max_absolute_drop", "max_relative_drop"}
_DROP_KEYS = {"score", "robust_accuracy"}


@dataclass(frozen=True)
class RobustFloor:
    attack: str
    norm: str
    eps: float
    value: float


@dataclass(frozen=True)
class DetectionFloor:
    detector: str
    attack: str
    value: float


@dataclass
class Policy:
    text: str
    audit: dict[str, Any]
    min_clean_accuracy: float | None = None
    min_score: float | None = None
    credibility: str | list[str] | None = None  # "must-pass" or checks that may warn
    max_audit_age: timedelta | None = None
    min_robust_accuracy: list[RobustFloor] = field(default_factory=list)
    min_detection_rate: DetectionFloor | None = None
    baseline_reference: str | None = None  # None: the model's champion alias
    max_absolute_drop: dict[str, float] = field(default_factory=dict)
    max_relative_drop: dict[str, float] = field(default_factory=dict)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:16]

    @property
    def has_baseline_criteria(self) -> bool:
        return bool(self.max_absolute_drop or self.max_relative_drop)

    def audit_config(self, dataset: str | None) -> AuditConfig:
        """The audit the decision needs: gate-grade (the standard preset) unless the policy
        names a preset or its attacks."""
        levels = [{"preset": DEFAULT_PRESET}, self.audit]
        if dataset and not self.audit.get("dataset"):
            levels.append({"dataset": dataset})
        if not merge_levels(*levels).get("dataset"):
            raise PolicyError(
                "policy: audit.dataset is missing and the version has no robustness.dataset tag."
            )
        try:
            return config_from(*levels)
        except AuditError as err:
            raise PolicyError(f"policy [audit]: {err}") from None


def load_policy(path: Path) -> Policy:
    """Read and validate a policy file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise PolicyError(f"cannot read the policy {path}: {err.strerror}.") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"the policy {path} is not valid TOML: {err}.") from None
    return parse_policy(data, text)


def parse_policy(data: dict[str, Any], text: str) -> Policy:
    _known(data, _TOP, "")
    audit = _table(data, "audit")
    try:
        audit = audit_defaults(audit)
    except AuditError as err:
        raise PolicyError(str(err).replace("robmon.toml: audit.", "policy: audit.")) from None
    criteria = _table(data, "criteria")
    baseline = _table(data, "baseline")
    _known(criteria, _CRITERIA, "criteria.")
    _known(baseline, _BASELINE, "baseline.")
    policy = Policy(text=text, audit=audit)
    policy.min_clean_accuracy = _fraction(criteria, "min_clean_accuracy", "criteria.")
    if "min_score" in criteria:
        policy.min_score = _number(criteria["min_score"], "criteria.min_score", 0, 100)
    policy.credibility = _credibility(criteria.get("credibility"))
    if "max_audit_age" in criteria:
        try:
            policy.max_audit_age = parse_duration(str(criteria["max_audit_age"]))
        except RobmonError:
            raise PolicyError(
                "policy: criteria.max_audit_age must be a duration such as 7d."
            ) from None
    policy.min_robust_accuracy = [
        _robust_floor(item, i) for i, item in enumerate(_list(criteria, "min_robust_accuracy"))
    ]
    if "min_detection_rate" in criteria:
        policy.min_detection_rate = _detection_floor(criteria["min_detection_rate"])
    if "reference" in baseline:
        if not isinstance(baseline["reference"], str) or not baseline["reference"]:
            raise PolicyError("policy: baseline.reference must be an alias or a model reference.")
        policy.baseline_reference = baseline["reference"]
    policy.max_absolute_drop = _drops(baseline, "max_absolute_drop")
    policy.max_relative_drop = _drops(baseline, "max_relative_drop")
    return policy


def _known(table: dict[str, Any], known: set[str], prefix: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise PolicyError(
            f"policy: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(known))})."
        )


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise PolicyError(f"policy: [{key}] must be a table.")
    return value


def _list(table: dict[str, Any], key: str) -> list[Any]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise PolicyError(f"policy: criteria.{key} must be a list of tables.")
    return value


def _number(value: Any, key: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise PolicyError(f"policy: {key} must be a number from {low:g} to {high:g}.")
    return float(value)


def _fraction(table: dict[str, Any], key: str, prefix: str) -> float | None:
    return _number(table[key], prefix + key, 0, 1) if key in table else None


def _credibility(value: Any) -> str | list[str] | None:
    if value is None or value == "must-pass":
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        from monitor.audit.checks import CHECKS

        names = {check.__name__ for check in CHECKS}
        unknown = [v for v in value if v not in names]
        if unknown:
            raise PolicyError(
                f"policy: criteria.credibility names an unknown check {unknown[0]!r} "
                f"(checks: {', '.join(sorted(names))})."
            )
        return value
    raise PolicyError(
        'policy: criteria.credibility is "must-pass" or a list of checks that may warn.'
    )


def _robust_floor(item: Any, index: int) -> RobustFloor:
    key = f"criteria.min_robust_accuracy[{index}]"
    if not isinstance(item, dict) or set(item) != {"attack", "norm", "eps", "value"}:
        raise PolicyError(f"policy: {key} needs exactly attack, norm, eps and value.")
    if item["norm"] not in ("linf", "l2"):
        raise PolicyError(f"policy: {key}.norm must be linf or l2.")
    return RobustFloor(
        str(item["attack"]),
        item["norm"],
        _number(item["eps"], f"{key}.eps", 0, 1000),
        _number(item["value"], f"{key}.value", 0, 1),
    )


def _detection_floor(item: Any) -> DetectionFloor:
    key = "criteria.min_detection_rate"
    if not isinstance(item, dict) or set(item) != {"detector", "attack", "value"}:
        raise PolicyError(f"policy: {key} needs exactly detector, attack and value.")
    if item["detector"] not in DETECTORS:
        raise PolicyError(f"policy: {key}.detector must be one of {', '.join(DETECTORS)}.")
    if item["attack"] not in ("fgsm", "pgd", "pgd+"):
        raise PolicyError(f"policy: {key}.attack must be fgsm, pgd or pgd+.")
    return DetectionFloor(
        item["detector"], item["attack"], _number(item["value"], f"{key}.value", 0, 1)
    )


def _drops(baseline: dict[str, Any], key: str) -> dict[str, float]:
    if key not in baseline:
        return {}
    value = baseline[key]
    if isinstance(value, int | float) and not isinstance(value, bool):
        values = dict.fromkeys(_DROP_KEYS, value)
    elif isinstance(value, dict):
        _known(value, _DROP_KEYS, f"baseline.{key}.")
        values = value
    else:
        raise PolicyError(
            f"policy: baseline.{key} is a number or a table of score and robust_accuracy."
        )
    out = {}
    for name, number in values.items():
        high = 100 if key == "max_absolute_drop" and name == "score" else 1
        out[name] = _number(number, f"baseline.{key}.{name}", 0, high)
    return out
