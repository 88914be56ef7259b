"""What an audit runs: dataset, attacks, norms, eps grid, steps, restarts, sample limit, seed.

Two audits with the same model version and the same ``config_hash`` are the same audit: the
hash covers everything that changes the numbers (not batch size or device).

Without an explicit eps grid the default depends on the input kind (grayscale or colour, from
the dataset's channels) and the norm, as RobustBench and AutoAttack use them; the kind is part
of the configuration, so a queued audit is rebuilt with the same grid and hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from monitor.errors import AuditError

ATTACK_NAMES = ("fgsm", "pgd", "apgd")
NORMS = ("linf", "l2")
# input kind -> norm -> default grid (L∞ 8/255 and L2 0.5 are RobustBench's CIFAR-10 radii)
DEFAULT_EPS = {
    "grayscale": {"linf": (0.1, 0.2, 0.3), "l2": (0.5, 1.0, 2.0)},
    "colour": {"linf": (2 / 255, 4 / 255, 8 / 255), "l2": (0.125, 0.25, 0.5)},
}
INPUT_KINDS = tuple(DEFAULT_EPS)
GRAYSCALE_DATASETS = ("digits", "digits28")  # built-ins whose kind is known without loading
# Credibility probe: a radius at which every honest attack should leave (almost) nothing.
LARGE_EPS = {"linf": 1.0, "l2": 100.0}


@dataclass(frozen=True)
class AuditConfig:
    """An audit's configuration; ``surrogate`` is a resolved ``name/version`` once hashed."""

    dataset: str
    attacks: tuple[str, ...] = ("fgsm", "pgd")
    norms: tuple[str, ...] = ("linf",)
    eps: tuple[float, ...] | None = None
    steps: int = 10
    restarts: int = 1
    limit: int | None = None
    seed: int = 0
    surrogate: str | None = None
    # defended models: attack through non-differentiable transforms with BPDA and through
    # randomised ones with EOT (False only to show the false robustness of a naive attack)
    adaptive: bool = True
    eot_samples: int = 10
    # grayscale | colour: picks the default eps grid when ``eps`` is None (see input_kind_of)
    input_kind: str | None = None
    # the model's input contract (canonical JSON) when it is not plain pixels: a changed
    # contract changes the numbers, so it is a different audit (None: [0, 1] N×C×H×W)
    input_contract: str | None = None

    def __post_init__(self) -> None:
        for attack in self.attacks:
            if attack not in ATTACK_NAMES:
                raise AuditError(
                    f"unknown attack {attack!r}; choose from {', '.join(ATTACK_NAMES)}."
                )
        for norm in self.norms:
            if norm not in NORMS:
                raise AuditError(f"unknown norm {norm!r}; choose from linf, l2.")
        if self.input_kind is not None and self.input_kind not in INPUT_KINDS:
            raise AuditError(f"input_kind must be grayscale or colour, not {self.input_kind!r}.")
        if self.eps is None and self.input_kind is None and self.dataset in GRAYSCALE_DATASETS:
            object.__setattr__(self, "input_kind", "grayscale")  # known without loading it
        if not self.attacks or not self.norms:
            raise AuditError("an audit needs at least one attack and one norm.")
        if self.eps is not None and (not self.eps or any(not e > 0 for e in self.eps)):
            raise AuditError("every eps must be a positive number.")
        if self.steps < 1 or self.restarts < 1:
            raise AuditError("--steps and --restarts must be at least 1.")
        if self.limit is not None and self.limit < 1:
            raise AuditError("--limit must be at least 1.")
        if self.eot_samples < 1:
            raise AuditError("eot_samples must be at least 1.")

    def eps_for(self, norm: str) -> tuple[float, ...]:
        """The eps grid for one norm, ascending (the input kind's default when none is given)."""
        if self.eps is not None:
            return tuple(sorted(self.eps))
        if self.input_kind is None:  # a programmer mistake: plan the audit first
            raise AuditError(
                f"the default eps grid of {self.dataset} depends on its channels; "
                "plan the audit (with_input_kind) or pass --eps."
            )
        return tuple(sorted(DEFAULT_EPS[self.input_kind][norm]))

    def eps_grid(self) -> dict[str, list[float]]:
        """norm -> eps grid, as stored in the configuration and in run_info."""
        return {n: list(self.eps_for(n)) for n in self.norms}

    def eps_why(self) -> str:
        """One line saying where the eps grid came from."""
        if self.eps is not None:
            return "given with --eps or an [audit] eps"
        channels = 1 if self.input_kind == "grayscale" else 3
        return (
            f"default for {self.input_kind} inputs ({channels} channel{'s' if channels > 1 else ''}"
            "), as RobustBench/AutoAttack use"
        )

    def with_input_kind(self, channels: int) -> AuditConfig:
        """This configuration with the input kind of data with ``channels`` channels (only
        where the default grid applies: an explicit grid keeps the configuration as is)."""
        if self.eps is not None or self.input_kind is not None:
            return self
        return replace(self, input_kind=input_kind_of(channels))

    def cells(self) -> list[tuple[str, str, float]]:
        """Every (attack, norm, eps) the audit measures."""
        return [(a, n, e) for n in self.norms for e in self.eps_for(n) for a in self.attacks]

    def canonical(self) -> dict[str, Any]:
        data = asdict(self)
        data["eps"] = self.eps_grid()
        if self.eps is not None:  # the kind only matters for the default grid
            data["input_kind"] = None
        data["attacks"] = sorted(self.attacks)
        data["norms"] = sorted(self.norms)
        for key, default in _HASH_DEFAULTS.items():  # added later: old audits keep their hash
            if data[key] == default:
                del data[key]
        return data

    def hash(self) -> str:
        """SHA-256 of the canonical JSON form (stable across runs and machines)."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_surrogate(self, surrogate: str | None) -> AuditConfig:
        return replace(self, surrogate=surrogate)


_HASH_DEFAULTS = {"adaptive": True, "eot_samples": 10, "input_kind": None, "input_contract": None}


def input_kind_of(channels: int) -> str:
    """grayscale for one channel, colour otherwise."""
    return "grayscale" if channels == 1 else "colour"


def parse_eps(text: str) -> tuple[float, ...]:
    """``"0.05,0.1,8/255"`` -> (0.05, 0.1, 0.0314...)."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "/" in part:
                num, den = part.split("/", 1)
                values.append(float(num) / float(den))
            else:
                values.append(float(part))
        except (ValueError, ZeroDivisionError):
            raise AuditError(
                f"--eps takes numbers such as 0.05,0.1 or 8/255, not {part!r}."
            ) from None
    if not values:
        raise AuditError("--eps needs at least one value.")
    return tuple(values)


def eps_text(eps: float | str) -> str:
    """An eps as it was likely typed (the inverse of ``parse_eps``): ``0.1``, or ``8/255`` for
    a multiple of 1/255 that has no short decimal form; text that is no number as given."""
    try:
        value = float(eps)
    except ValueError:
        return str(eps)
    short, steps = f"{value:g}", value * 255
    if len(short) > 5 and abs(steps - round(steps)) < 1e-4 and round(steps) > 0:
        return f"{round(steps)}/255"
    return f"{value:.4g}"


_DEFAULT_KEYS = {
    "dataset",
    "attacks",
    "norms",
    "eps",
    "steps",
    "restarts",
    "limit",
    "seed",
    "batch_size",
    "memory_limit",
    "device",
    "adaptive",
    "eot_samples",
}


def audit_defaults(table: dict[str, Any]) -> dict[str, Any]:
    """Validated ``[audit]`` defaults from robmon.toml (keys as in AuditConfig, plus
    batch_size, memory_limit and device)."""
    unknown = set(table) - _DEFAULT_KEYS
    if unknown:
        raise AuditError(
            f"robmon.toml: unknown key audit.{sorted(unknown)[0]} "
            f"(known: {', '.join(sorted(_DEFAULT_KEYS))})."
        )
    out = dict(table)
    for key in ("attacks", "norms"):
        if key in out:
            if isinstance(out[key], str):
                out[key] = [out[key]]
            if not isinstance(out[key], list) or not all(isinstance(v, str) for v in out[key]):
                raise AuditError(f"robmon.toml: audit.{key} must be a list of names.")
            out[key] = tuple(out[key])
    if "eps" in out:
        eps = out["eps"]
        if isinstance(eps, str):
            out["eps"] = parse_eps(eps)
        elif isinstance(eps, list) and all(isinstance(v, int | float) for v in eps):
            out["eps"] = tuple(float(v) for v in eps)
        else:
            raise AuditError("robmon.toml: audit.eps must be a list of numbers.")
    for key in ("steps", "restarts", "limit", "seed"):
        if key in out and not isinstance(out[key], int):
            raise AuditError(f"robmon.toml: audit.{key} must be an integer.")
    from monitor.audit.memory import batch_settings  # "auto" or N, and a size in bytes

    out.update(batch_settings(out))
    return out
