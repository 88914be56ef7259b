"""What the scheduler watches and how it audits: the ``[watch]`` table of robmon.toml.

The audit configuration of a model version is built from, in increasing precedence: the
``[audit]`` defaults, ``[watch.config.NAME]``, and the version's ``robustness.dataset`` tag. A
version with no dataset anywhere is skipped with that reason, never audited on nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from monitor.audit.config import AuditConfig, audit_defaults, config_from, merge_levels
from monitor.audit.presets import PRESETS
from monitor.config import Settings
from monitor.errors import AuditError, ConfigError, RobmonError
from monitor.registry import DATASET_TAG, ModelVersionRef, Registry
from monitor.times import parse_duration

_KEYS = {
    "models",
    "config",
    "aliases",
    "poll_interval",
    "sweep",
    "max_audit_age",
    "retry_backoff",
    "max_attempts",
    "run_audits",
    "device",
    "batch_size",
    "lease_ttl",
    "poll_preset",
    "sweep_preset",
}
POLL_TRIGGERS = ("registry-poll", "alias-moved")  # what the registry poll queues audits for
_HHMM = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")


@dataclass(frozen=True)
class WatchSettings:
    models: tuple[str, ...] | None = None  # None: every registered model
    aliases: tuple[str, ...] = ("champion", "challenger")
    poll_interval: float = 300.0
    sweep: str = "02:00"  # HH:MM local time, or a five-field crontab line
    max_audit_age: timedelta = timedelta(days=7)
    retry_backoff: timedelta = timedelta(minutes=10)
    max_attempts: int = 5
    run_audits: bool = True  # False when `robmon worker` processes run the queue
    device: str | None = None
    batch_size: int | str | None = None  # None: [audit] batch_size (default auto)
    lease_ttl: float = 30.0  # seconds a dead scheduler keeps its lease before a standby takes over
    # the attack preset of each trigger, beneath [audit] and [watch.config.NAME] (which may name
    # their own preset or attacks): the poll gives fast feedback on a new version, the nightly
    # sweep (and so the headline score) is gate-grade
    poll_preset: str = "quick"
    sweep_preset: str = "standard"
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def from_settings(settings: Settings) -> WatchSettings:
        table = dict(settings.section("watch"))
        unknown = set(table) - _KEYS
        if unknown:
            raise ConfigError(
                f"robmon.toml: unknown key watch.{sorted(unknown)[0]} "
                f"(known: {', '.join(sorted(_KEYS))})."
            )
        per_model = table.pop("config", {})
        if not isinstance(per_model, dict) or not all(
            isinstance(v, dict) for v in per_model.values()
        ):
            raise ConfigError("robmon.toml: [watch.config.NAME] tables hold per-model settings.")
        for name, overrides in per_model.items():
            try:
                audit_defaults(overrides)  # validate early: one sentence naming the key
            except AuditError as err:
                raise ConfigError(str(err).replace("audit.", f"watch.config.{name}.")) from None
        values: dict[str, Any] = {
            "per_model": per_model,
            "audit": audit_defaults(settings.section("audit")),
        }
        if "models" in table:
            models = table.pop("models")
            if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
                raise ConfigError("robmon.toml: watch.models is a list of model names.")
            values["models"] = tuple(models)
        for key in ("max_audit_age", "retry_backoff"):
            if key in table:
                values[key] = _duration(table.pop(key), key)
        if "aliases" in table:
            values["aliases"] = tuple(table.pop("aliases"))
        if "sweep" in table:
            values["sweep"] = _sweep(table.pop("sweep"))
        for key in ("poll_preset", "sweep_preset"):
            if key in table and table[key] not in PRESETS:
                raise ConfigError(
                    f"robmon.toml: watch.{key} must be one of {', '.join(PRESETS)}, "
                    f"not {table[key]!r}."
                )
        values.update(table)
        return WatchSettings(**values)

    def preset_for(self, trigger: str) -> str:
        """The preset a trigger audits with: the poll's for what the registry poll finds (new
        versions, moved aliases), else the sweep's."""
        return self.poll_preset if trigger in POLL_TRIGGERS else self.sweep_preset

    def watches(self, model: str) -> bool:
        return self.models is None or model in self.models

    def sweep_fields(self) -> dict[str, str]:
        """APScheduler cron fields of the nightly sweep."""
        match = _HHMM.match(self.sweep)
        if match:
            return {"hour": match[1], "minute": match[2]}
        minute, hour, day, month, day_of_week = self.sweep.split()
        return {
            "minute": minute,
            "hour": hour,
            "day": day,
            "month": month,
            "day_of_week": day_of_week,
        }


def _duration(value: Any, key: str) -> timedelta:
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    try:
        return parse_duration(str(value))
    except RobmonError:
        raise ConfigError(
            f"robmon.toml: watch.{key} must be a duration such as 7d or 10m."
        ) from None


def _sweep(value: Any) -> str:
    text = str(value).strip()
    if _HHMM.match(text) or len(text.split()) == 5:
        return text
    raise ConfigError("robmon.toml: watch.sweep is HH:MM or a five-field crontab line.")


def audit_config_for(
    registry: Registry, ref: ModelVersionRef, watch: WatchSettings, trigger: str = "nightly-sweep"
) -> AuditConfig | str:
    """The scheduled audit configuration of a version for a trigger (its preset beneath
    [audit] and [watch.config.NAME]), or why it is skipped."""
    overrides = audit_defaults(watch.per_model.get(ref.name, {}))
    tag = registry.version_tags(ref).get(DATASET_TAG)
    levels = [{"preset": watch.preset_for(trigger)}, watch.audit, overrides]
    if tag:
        levels.append({"dataset": tag})
    try:
        if not merge_levels(*levels).get("dataset"):
            return (
                f"{ref} has no dataset: set its {DATASET_TAG} tag or "
                f"[watch.config.{ref.name}].dataset (or [audit].dataset)"
            )
        return config_from(*levels)
    except AuditError as err:
        return f"{ref}: {err}"
