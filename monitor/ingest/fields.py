"""A record's named fields (``source``, ``model``, ``id``, ``version``, ``ts``): validated and in
one canonical spelling each, so that no spelling of a value reaches a different model version,
calibration or source than the plain one.

- Text (``source``, ``model``, ``id``): a string of 1 to ``MAX_TEXT`` characters (the database's
  column width) without control characters (C0, DEL, C1), Unicode format characters (right-to-left
  overrides, zero-width spaces: category Cf), surrogates or line/paragraph separators. ``source``
  and ``model`` have no surrounding whitespace; a model name has no ``/`` or ``:`` (MLflow refuses
  them). ``id`` may also be an integer (never a boolean).
- ``version``: an integer or a string of ASCII digits, from 1 to 2**31 - 1, written canonically
  (``"001"`` and ``1`` are ``"1"``); digits of other scripts (``"٠١"``, ``"１"``) are refused; any
  other string is an alias of ASCII letters, digits, ``_``, ``.`` and ``-``.
- ``guard`` (optional, written by a guarded model): ``{"verdict": "allow" | "review" |
  "refuse", "reason": text}``; the reason is cut to ``MAX_TEXT`` characters.
- ``ts``: ISO 8601 (at most ``MAX_TS`` printable ASCII characters), in UTC between 1970 and
  9998 (every window can add and subtract from it).

Every problem raises BadRecord with one sentence that quotes at most ``QUOTE_LIMIT`` characters.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

from monitor.errors import BadRecord, quoted

MAX_TEXT = 255  # characters of source, model and id (the width of their database columns)
MAX_VERSION = 2**31 - 1  # the registry's versions are 32-bit integers
MAX_TS = 64  # characters of ts: 2026-11-24T19:00:00.123456789+05:30 is 35
# record times that every window, retention and cool-down can add to or subtract from
TS_RANGE = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
_REFUSED_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "a Unicode format character",
    "Cs": "a surrogate",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}
_ASCII_DIGITS = re.compile(r"[0-9]+")
_ALIAS = re.compile(r"[A-Za-z0-9_.-]+")


def text_field(data: dict[str, Any], key: str, *, strip: bool = True) -> str:
    """A text field by the rules above (``strip``: surrounding whitespace is refused)."""
    value = data[key]
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise BadRecord(f"{key} must be a string of 1 to {MAX_TEXT} characters.")
    for char in value:
        what = _REFUSED_CATEGORIES.get(unicodedata.category(char))
        if what is not None:
            raise BadRecord(f"{key} holds {what} (U+{ord(char):04X}): {key} is plain text.")
    if strip and value != value.strip():
        raise BadRecord(f"{key} {quoted(value)} has surrounding whitespace.")
    return value


def model_name(data: dict[str, Any]) -> str:
    name = text_field(data, "model")
    if "/" in name or ":" in name:
        raise BadRecord(f"model {quoted(name)} is not a model name: names hold no '/' or ':'.")
    return name


def request_id(data: dict[str, Any]) -> str | None:
    """The record's id as text (an integer id as its decimal digits), or None."""
    value = data.get("id")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
        if len(value) > MAX_TEXT:
            raise BadRecord(f"id must be a string of 1 to {MAX_TEXT} characters or an integer.")
        return value
    if not isinstance(value, str):
        raise BadRecord(f"id must be a string of 1 to {MAX_TEXT} characters or an integer.")
    return text_field(data, "id", strip=False)


GUARD_VERDICTS = ("allow", "review", "refuse")


def guard_verdict(data: dict[str, Any]) -> tuple[str | None, str | None]:
    """(verdict, reason) of the record's ``guard`` object, or (None, None) without one."""
    guard = data.get("guard")
    if guard is None:
        return None, None
    if not isinstance(guard, dict) or guard.get("verdict") not in GUARD_VERDICTS:
        choices = ", ".join(GUARD_VERDICTS)
        raise BadRecord(f"guard must be an object whose verdict is one of {choices}.")
    reason = guard.get("reason")
    if reason is None:
        return guard["verdict"], None
    if not isinstance(reason, str):
        raise BadRecord("guard.reason must be a string.")
    cut = {"reason": reason[:MAX_TEXT].strip() or "-"}
    return guard["verdict"], text_field(cut, "reason")


def canonical_version(value: Any) -> str | None:
    """A version number in its one spelling (``"1"`` for ``1``, ``"01"`` and ``"001"``), an
    alias as written, or None when the record names none."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRecord("version must be a number or an alias.")
    text = str(value)
    if _ASCII_DIGITS.fullmatch(text) or isinstance(value, int):
        digits = text.lstrip("-").lstrip("0") or "0"
        if text.startswith("-") or len(digits) > 10 or not 1 <= int(digits) <= MAX_VERSION:
            shown = text[:20] + ("…" if len(text) > 20 else "")
            raise BadRecord(f"version {shown} is out of range (versions are 1 to 2**31 - 1).")
        return digits
    if any(not char.isascii() and unicodedata.category(char) == "Nd" for char in text):
        raise BadRecord(
            f"version {quoted(text)} is not written in ASCII digits 0-9 (nor is it an alias)."
        )
    if not _ALIAS.fullmatch(text) or len(text) > MAX_TEXT:
        raise BadRecord(
            f"version {quoted(text)} is neither a number nor an alias (aliases are ASCII "
            "letters, digits, '_', '.' and '-')."
        )
    return text


def timestamp(value: Any) -> datetime:
    """``ts`` as an aware UTC datetime within ``TS_RANGE``."""
    if not isinstance(value, str):
        raise BadRecord("ts must be an ISO 8601 string such as 2026-11-24T19:00:00Z.")
    if len(value) > MAX_TS or not (value.isascii() and value.isprintable()):
        # fromisoformat reads a 10,000-digit fraction, and a NUL at the end, without complaint
        raise BadRecord(
            f"ts {quoted(value, 44)} is not an ISO 8601 time of at most {MAX_TS} printable "
            "ASCII characters."
        )
    try:
        ts = datetime.fromisoformat(value)
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    except ValueError:
        raise BadRecord(f"ts {quoted(value, 44)} is not an ISO 8601 time.") from None
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        ts = None
    if ts is None or not TS_RANGE[0] <= ts < TS_RANGE[1]:
        raise BadRecord(
            f"ts {quoted(value, 44)} is out of range: record times lie between "
            f"{TS_RANGE[0].year} and {TS_RANGE[1].year - 1}."
        )
    return ts
