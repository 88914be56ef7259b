"""Times given on the command line: ISO 8601 (``2026-11-24T19:00:00Z``) or relative (``30m``,
``24h``, ``7d`` before now)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from monitor.errors import RobmonError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A point in time, aware in UTC, from year 1 on."""
    now = now or datetime.now(UTC)
    try:
        if _RELATIVE.match(text.strip()):
            return now - parse_duration(text)
        value = datetime.fromisoformat(text.strip())
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except ValueError:
        raise RobmonError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-24T19:00:00Z) or 30m, 24h, 7d."
        ) from None
    except OverflowError:  # before year 1
        raise RobmonError(f"{text!r} reaches back before the year 1.") from None


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``2h``, ``7d`` as a timedelta, at most 999,999,999 days."""
    match = _RELATIVE.match(text.strip())
    if not match:
        raise RobmonError(f"{text!r} is not a duration such as 90s, 10m, 2h or 7d.")
    try:
        return timedelta(**{_UNITS[match[2]]: float(match[1])})
    except OverflowError:
        raise RobmonError(f"{text!r} is too long: a duration is at most 999999999d.") from None
