"""The ``[alerts]`` table of robmon.toml, with documented defaults."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from monitor.config import Settings
from monitor.errors import ConfigError, RobmonError
from monitor.times import parse_duration

log = logging.getLogger(__name__)
_DURATIONS = ("horizon", "probe_window", "cooldown", "fingerprint_retention")
# keys of earlier releases that the sequential tests made meaningless: accepted, ignored, logged
_RETIRED = ("window", "min_count", "min_rate_ratio")


@dataclass(frozen=True)
class WebhookSettings:
    url: str | None = None
    secret: str | None = None
    timeout: float = 10.0
    max_attempts: int = 10
    backoff: timedelta = timedelta(seconds=30)


@dataclass(frozen=True)
class AlertSettings:
    fdr: float = 0.01  # Benjamini–Hochberg false discovery rate across sources
    baseline_factor: float = 1.5  # safety margin on the worst benign rate measured at calibration
    horizon: timedelta = timedelta(hours=24)  # a silence this long restarts a source's tests
    probe_window: timedelta = timedelta(hours=6)  # near-duplicates are looked for this far back
    probe_min_matches: int = 10  # near-duplicate queries of one seed image before alerting
    probe_member_min: int = 3  # variants of one seed an address sends to join a distributed group
    probe_min_density: float = 0.5  # share of an address's inputs in that time that are variants
    probe_min_shared: int | None = None  # fingerprint hashes for a match (default: calibrated)
    cooldown: timedelta = timedelta(minutes=30)  # record time before a closed incident reopens
    evaluation_interval: float = 30.0  # seconds, in `robmon scheduler` / `robmon serve`
    fingerprint_retention: timedelta = timedelta(hours=24)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)

    @staticmethod
    def from_settings(settings: Settings) -> AlertSettings:
        table: dict[str, Any] = dict(settings.section("alerts"))
        webhook = dict(table.pop("webhook", {}) or {})
        known = set(AlertSettings.__dataclass_fields__) - {"webhook"}
        for key in _RETIRED:
            if table.pop(key, None) is not None:
                log.warning("robmon.toml: alerts.%s is no longer used (sequential tests)", key)
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
        if webhook.get("url") not in (None, ""):  # empty: no webhook
            _check_webhook_url(webhook["url"])
        try:
            result = AlertSettings(**table, webhook=WebhookSettings(**webhook))
        except TypeError as err:
            raise ConfigError(f"robmon.toml [alerts]: {err}.") from None
        if not 0 < result.fdr < 1:
            raise ConfigError("robmon.toml: alerts.fdr must be between 0 and 1.")
        if result.probe_min_matches < 2 or result.probe_member_min < 2:
            raise ConfigError(
                "robmon.toml: alerts.probe_min_matches and probe_member_min must be >= 2."
            )
        if not 0 < result.probe_min_density <= 1:
            raise ConfigError("robmon.toml: alerts.probe_min_density must be in (0, 1].")
        return result


def _check_webhook_url(url: Any) -> None:
    """http or https with a host and a valid port: nothing else is ever sent to (file://,
    gopher://, ...). Whitespace and control characters are refused, not stripped: URL parsers
    drop them in different places, so the URL checked would not be the URL sent to."""
    if isinstance(url, str) and any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError(
            "robmon.toml: alerts.webhook.url must not contain spaces or control characters."
        )
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        given = f"{parts.scheme}://" if parts and parts.scheme else "no scheme"
        raise ConfigError(
            "robmon.toml: alerts.webhook.url must be an http:// or https:// URL with a host "
            f"(it has {given})."
        )
    try:
        port = parts.port  # parsed on access: 99999 or "abc" raise ValueError
    except ValueError:
        port = 0
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(
            "robmon.toml: alerts.webhook.url has an invalid port (use a number from 1 to 65535)."
        )


def _duration(value: Any, key: str) -> timedelta:
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    try:
        return parse_duration(str(value))
    except RobmonError:
        raise ConfigError(f"robmon.toml: {key} must be a duration such as 10m or 1h.") from None
