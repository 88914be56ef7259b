"""What an audit runs: dataset, attacks (or a preset), norms, eps grid, steps, restarts,
sample limit, seed.

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

from monitor.audit.presets import PRESET_KEYS, PRESET_RANK, PRESETS
from monitor.errors import AuditError

ATTACK_NAMES = ("fgsm", "pgd", "apgd", "apgd-t", "fab-t", "square")  # a chain's order
GRADIENT_ATTACKS = ("fgsm", "pgd", "apgd", "apgd-t", "fab-t")  # crafted on a differentiable model
QUERY_ATTACKS = ("square",)  # need only the target's scores: white boxes and black boxes alike
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
    steps: int = 10  # PGD steps
    restarts: int = 1  # PGD and APGD-CE restarts (APGD-T and Square run once)
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
    apgd_steps: int = 100  # APGD-CE, APGD-T and FAB-T steps (the papers' 100)
    target_classes: int = 9  # APGD-T and FAB-T: the top classes but the true one, each a target
    # APGD-T runs its targets after the first ``target_stop`` only while the one before fooled
    # some sample (less likely targets fool fewer); 0: always every target
    target_stop: int = 0
    # APGD-T: the targets after the first ``target_stop`` all run, each with this many steps
    # (a screen: a later target that fools mostly does so early), not one at a time at the
    # full steps while the one before fools any; 0: off
    target_screen: int = 0
    queries: int = 5000  # Square: queries per sample (the budget)
    # Square spends its budget in stages (``query_probe`` queries, then twice as many each), the
    # next only while the one before fooled some sample the gradient attacks left (a sign of
    # masked gradients); 0: always all of it in one search
    query_probe: int = 0
    # chained: each attack runs only on the samples still robust after the earlier ones, and a
    # result is the worst case so far (AutoAttack's structure); else each attack stands alone
    chain: bool = False
    # content digest of the dataset (files and image folders): new data is a new audit
    dataset_digest: str | None = None

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
        if self.apgd_steps < 1 or self.queries < 1 or self.target_classes < 1:
            raise AuditError("--apgd-steps, --queries and --target-classes must be at least 1.")
        if self.query_probe < 0 or self.target_stop < 0 or self.target_screen < 0:
            raise AuditError(
                "--query-probe, --target-stop and --target-screen must be 0 (off) or more."
            )
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
        """Every (attack, norm, eps) the audit measures; a chain's attacks in their order."""
        return [(a, n, e) for n in self.norms for e in self.eps_for(n) for a in self.ordered()]

    def ordered(self) -> tuple[str, ...]:
        """The attacks in the order they run: a chain goes from the cheapest to the query
        attack (AutoAttack's order), so later ones see only what earlier ones left."""
        if not self.chain:
            return self.attacks
        return tuple(sorted(self.attacks, key=ATTACK_NAMES.index))

    def steps_of(self, attack: str) -> int:
        """Steps of one attack (queries for Square)."""
        return {"fgsm": 1, "pgd": self.steps, "square": self.queries}.get(attack, self.apgd_steps)

    def restarts_of(self, attack: str) -> int:
        return self.restarts if attack in ("pgd", "apgd") else 1

    @property
    def preset(self) -> str:
        """quick, standard or thorough when the attack settings are exactly a preset's,
        else custom (the limit, eps grid and dataset do not matter)."""
        return preset_of(self)

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
        for key, users in _USED_BY.items():  # settings of attacks the audit does not run
            if not set(users) & set(self.attacks):
                data.pop(key, None)
        return data

    def hash(self) -> str:
        """SHA-256 of the canonical JSON form (stable across runs and machines)."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def with_surrogate(self, surrogate: str | None) -> AuditConfig:
        return replace(self, surrogate=surrogate)


_HASH_DEFAULTS = {
    "adaptive": True,
    "eot_samples": 10,
    "input_kind": None,
    "input_contract": None,
    "chain": False,
    "dataset_digest": None,
    "query_probe": 0,
    "target_stop": 0,
    "target_screen": 0,
}
# settings that change the numbers only when one of these attacks runs
_USED_BY = {
    "apgd_steps": ("apgd", "apgd-t", "fab-t"),
    "target_classes": ("apgd-t", "fab-t"),
    "target_stop": ("apgd-t",),
    "target_screen": ("apgd-t",),
    "queries": ("square",),
    "query_probe": ("square",),
}


def preset_of(config: AuditConfig) -> str:
    """The preset whose attack settings ``config`` has (settings of attacks it does not run
    do not count), else custom."""
    for name, values in PRESETS.items():
        if sorted(config.attacks) != sorted(values["attacks"]) or config.chain != values["chain"]:
            continue
        if all(
            getattr(config, key) == value
            for key, value in values.items()
            if key not in ("attacks", "chain") and _matters(config, key)
        ):
            return name
    return "custom"


def _matters(config: AuditConfig, key: str) -> bool:
    if key == "steps":
        return "pgd" in config.attacks
    return not (key in _USED_BY and not set(_USED_BY[key]) & set(config.attacks))


def stored_preset(config: dict[str, Any]) -> str:
    """The preset of a stored (canonical) configuration; custom when it cannot be read."""
    fields = {k: v for k, v in config.items() if k in PRESET_KEYS}
    fields["attacks"] = tuple(fields.get("attacks", ()))
    try:
        return preset_of(AuditConfig(dataset="-", eps=(1.0,), **fields))
    except (AuditError, TypeError):
        return "custom"


def headline_rank(config: dict) -> tuple[int, int, int]:
    """How much an audit's score can stand for the version: gate-grade presets first, then
    the whole dataset, then the input kind's default eps grid (what the watch and gate use)."""
    return (
        PRESET_RANK[stored_preset(config)],
        int(config.get("limit") is None),
        int(config.get("input_kind") is not None),
    )


def preset_text(config: AuditConfig) -> str:
    """One line for reports: the preset and the attacks it runs."""
    names = {
        "fgsm": "FGSM",
        "pgd": f"PGD-{config.steps}",
        "apgd": f"APGD-CE-{config.apgd_steps}",
        "apgd-t": f"APGD-T-{config.apgd_steps} ({config.target_classes} targets"
        + _target_stages(config),
        "fab-t": f"FAB-T-{config.apgd_steps} ({config.target_classes} targets)",
        "square": f"Square ({config.queries} queries"
        + (
            f" in stages from {config.query_probe}, while each fools any)"
            if 0 < config.query_probe < config.queries
            else ")"
        ),
    }
    joined = (" → " if config.chain else " + ").join(names[a] for a in config.ordered())
    restarts = f", {config.restarts} restarts" if config.restarts > 1 else ""
    kind = {
        "quick": "fast feedback, not gate-grade",
        "standard": "gate-grade",
        "thorough": "gate-grade, with restarts",
        "custom": "not a preset",
    }[config.preset]
    return f"{config.preset} ({kind}): {joined}{restarts}"


def _target_stages(config: AuditConfig) -> str:
    if not 0 < config.target_stop < config.target_classes:
        return ")"
    if config.target_screen:
        first = "the first" if config.target_stop == 1 else f"the first {config.target_stop}"
        return f"; after {first}, {config.target_screen} steps each)"
    return f"; after {config.target_stop}, while the one before fools any)"


def cell_key(cell: Any) -> str:
    """``"white-box square linf 0.1"``: how run_info names a result cell."""
    return f"{cell.threat} {cell.attack} {cell.norm} {cell.eps:g}"


def merge_levels(*levels: dict[str, Any]) -> dict[str, Any]:
    """Audit settings from lowest to highest precedence; a level that names a preset (or its
    own attacks) replaces the attack settings of the levels below it (a preset on the command
    line beats attacks in robmon.toml); a preset is expanded into its settings."""
    out: dict[str, Any] = {}
    for level in levels:
        level = {k: v for k, v in level.items() if v is not None}
        if "preset" in level:
            name = level.pop("preset")
            if name not in PRESETS:
                raise AuditError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}.")
            out = {k: v for k, v in out.items() if k not in PRESET_KEYS}
            out.update(PRESETS[name])
        elif "attacks" in level:  # attacks named without a preset: nothing of one below
            out = {k: v for k, v in out.items() if k not in PRESET_KEYS}
        out.update(level)
    return out


def config_from(*levels: dict[str, Any]) -> AuditConfig:
    """An AuditConfig from settings levels (``merge_levels``), unknown keys left out."""
    fields = merge_levels(*levels)
    return AuditConfig(**{k: v for k, v in fields.items() if k in AuditConfig.__dataclass_fields__})


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
    "preset",
    "apgd_steps",
    "target_classes",
    "queries",
    "query_probe",
    "target_stop",
    "target_screen",
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
    if "preset" in out and out["preset"] not in PRESETS:
        raise AuditError(
            f"robmon.toml: audit.preset must be one of {', '.join(PRESETS)}, not {out['preset']!r}."
        )
    for key in (
        "steps",
        "restarts",
        "limit",
        "seed",
        "apgd_steps",
        "target_classes",
        "queries",
        "query_probe",
        "target_stop",
        "target_screen",
    ):
        if key in out and not isinstance(out[key], int):
            raise AuditError(f"robmon.toml: audit.{key} must be an integer.")
    from monitor.audit.memory import batch_settings  # "auto" or N, and a size in bytes

    out.update(batch_settings(out))
    return out
