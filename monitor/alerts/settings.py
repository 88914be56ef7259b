"""The ``[alerts]`` table of robmon.toml, with documented defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from monitor.config import Settings
from monitor.errors import ConfigError, RobmonError
from monitor.times import parse_duration

_DURATIONS = ("window", "probe_window", "cooldown", "fingerprint_retention")


@dataclass(frozen=True)
class WebhookSettings:
    url: str | None = None
    secret: str | None = None
    timeout: float = 10.0
    max_attempts: int = 10
    backoff: timedelta = timedelta(seconds=30)


@dataclass(frozen=True)
class AlertSettings:
    window: timedelta = timedelta(minutes=10)  # rate rules: a source's recent inputs
    min_count: int = 20  # inputs in the window before a rate is tested
    fdr: float = 0.01  # Benjamini–Hochberg false discovery rate across sources tested together
    min_rate_ratio: float = 2.0  # the observed rate must also be this many times the baseline
    baseline_factor: float = 1.5  # safety margin on the benign rate measured at calibration
    probe_window: timedelta = timedelta(hours=1)
    probe_min_matches: int = 10  # near-duplicate queries in the window before alerting
    probe_min_shared: int | None = None  # fingerprint hashes for a match (default: calibrated)
    cooldown: timedelta = timedelta(minutes=30)  # before a resolved alert may open again
    evaluation_interval: float = 30.0  # seconds, in `robmon scheduler` / `robmon serve`
    fingerprint_retention: timedelta = timedelta(hours=24)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)

    @staticmethod
    def from_settings(settings: Settings) -> AlertSettings:
        table: dict[str, Any] = dict(settings.section("alerts"))
        webhook = dict(table.pop("webhook", {}) or {})
        known = set(AlertSettings.__dataclass_fields__) - {"webhook"}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(
                f"robmon.toml: unknown key alerts.{sorted(unknown)[0]} "
                f"(known: {', '.join(sorted(known | {'webhook'}))})."
            )
        for key in _DURATIONS:
            if key in table:
                table[key] = _duration(table[key], f"alerts.{key}")
        hook_known = set(WebhookSettings.__dataclass_fields__)
        if not isinstance(webhook, dict) or set(webhook) - hook_known:
            bad = sorted(set(webhook) - hook_known) if isinstance(webhook, dict) else ["?"]
            raise ConfigError(f"robmon.toml: unknown key alerts.webhook.{bad[0]}.")
        if "backoff" in webhook:
            webhook["backoff"] = _duration(webhook["backoff"], "alerts.webhook.backoff")
        try:
            result = AlertSettings(**table, webhook=WebhookSettings(**webhook))
        except TypeError as err:
            raise ConfigError(f"robmon.toml [alerts]: {err}.") from None
        if not 0 < result.fdr < 1:
            raise ConfigError("robmon.toml: alerts.fdr must be between 0 and 1.")
        if result.min_count < 1 or result.probe_min_matches < 1:
            raise ConfigError("robmon.toml: alerts.min_count and probe_min_matches must be >= 1.")
        return result


def _duration(value: Any, key: str) -> timedelta:
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    try:
        return parse_duration(str(value))
    except RobmonError:
        raise ConfigError(f"robmon.toml: {key} must be a duration such as 10m or 1h.") from None
