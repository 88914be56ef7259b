"""Times given on the command line: ISO 8601 (``2026-11-24T19:00:00Z``) or relative (``30m``,
``24h``, ``7d`` before now)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from monitor.errors import RobmonError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time, aware in UTC."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text.strip())
    if match:
        return now - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise RobmonError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-24T19:00:00Z) or 30m, 24h, 7d."
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``2h``, ``7d`` as a timedelta."""
    match = _RELATIVE.match(text.strip())
    if not match:
        raise RobmonError(f"{text!r} is not a duration such as 90s, 10m, 2h or 7d.")
    return timedelta(**{_UNITS[match[2]]: float(match[1])})
