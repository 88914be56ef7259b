"""The ``[guard]`` table of robmon.toml and the decision it makes: allow, review or refuse.

    [guard]
    refuse = "strong"          # detector tier that refuses: strong, combined, squeeze, none
    review = "combined"        # detector tier that sends to review: strong, combined, squeeze,
                               #   low_confidence, none
    uncalibrated = "review"    # a version without a calibration: allow, review, refuse
    incident_severity = "high" # an open incident of this severity or above acts on its source
    incident_action = "refuse" # refuse or review
    cache_seconds = 5.0        # how long incident state and overrides are read from memory
    publish = ""               # JSON Lines file or redis://HOST:PORT[/DB]/STREAM ("" : none)

Tiers are the calibration's flags (``monitor.detect.thresholds``): ``strong`` is above 99.9% of
every benign group, ``combined`` the combined detector at the target false-positive rate,
``squeeze`` the squeezing divergence, ``low_confidence`` the confidence threshold. A tier the
calibration lacks (an older calibration without a strong threshold) flags nothing, and the guard
says so once when it loads. Decisions combine by severity (refuse > review > allow); a triager's
override of the source (``refuse`` or ``allow``) wins over everything.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from monitor.errors import ConfigError

VERDICTS = ("allow", "review", "refuse")  # in rising severity
TIER_FLAGS = {
    "strong": "strong_suspicious",
    "combined": "combined_suspicious",
    "squeeze": "squeeze_suspicious",
    "low_confidence": "low_confidence",
    "none": None,
}
SEVERITIES = ("low", "medium", "high", "critical")
_CHOICES = {
    "refuse": tuple(k for k in TIER_FLAGS if k != "low_confidence"),
    "review": tuple(TIER_FLAGS),
    "uncalibrated": VERDICTS,
    "incident_severity": SEVERITIES,
    "incident_action": ("refuse", "review"),
}


@dataclass(frozen=True)
class GuardPolicy:
    refuse: str = "strong"
    review: str = "combined"
    uncalibrated: str = "review"
    incident_severity: str = "high"
    incident_action: str = "refuse"
    cache_seconds: float = 5.0
    publish: str = ""

    @staticmethod
    def from_table(table: dict[str, Any]) -> GuardPolicy:
        known = {f.name for f in fields(GuardPolicy)}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(
                f"robmon.toml: unknown key guard.{sorted(unknown)[0]} "
                f"(known: {', '.join(sorted(known))})."
            )
        for key, choices in _CHOICES.items():
            if key in table and table[key] not in choices:
                raise ConfigError(
                    f"robmon.toml: guard.{key} is one of {', '.join(choices)}, not {table[key]!r}."
                )
        seconds = table.get("cache_seconds", 5.0)
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not 0 <= seconds <= 3600
        ):
            raise ConfigError(
                "robmon.toml: guard.cache_seconds is a number of seconds (0 to 3600)."
            )
        publish = table.get("publish", "")
        scheme = (
            publish.partition("://")[0] if isinstance(publish, str) and "://" in publish else ""
        )
        if scheme and scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"guard.publish is a file or redis://HOST:PORT[/DB]/STREAM, not a {scheme} URL."
            )
        if not isinstance(publish, str):
            raise ConfigError(
                "robmon.toml: guard.publish is a file path or a Redis stream address."
            )
        return GuardPolicy(**{**table, "cache_seconds": float(seconds)})

    def detector_verdict(self, flags: dict[str, bool]) -> tuple[str, str | None]:
        """(verdict, reason) from one input's calibration flags."""
        for verdict, tier in (("refuse", self.refuse), ("review", self.review)):
            flag = TIER_FLAGS[tier]
            if flag is not None and flags.get(flag, False):
                return verdict, f"{tier} detector tier ({verdict} tier of the policy)"
        return "allow", None

    def incident_verdict(self, severity: str | None) -> str:
        """The verdict an open incident of ``severity`` on the source asks for."""
        if severity is None or SEVERITIES.index(severity) < SEVERITIES.index(
            self.incident_severity
        ):
            return "allow"
        return self.incident_action


def worst(*verdicts: str) -> str:
    """The most severe of some verdicts (refuse > review > allow)."""
    return max(verdicts, key=VERDICTS.index)
