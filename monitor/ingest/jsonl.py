"""One JSON Lines line -> a JSON value, as the standard says and in one reading only.

orjson parses (fast), but it keeps the last of two equal keys in an object: a record naming
``"model": "digits-cnn", "model": "digits-logreg"`` would be scored on a model that a reader of
the line, or a JSON parser that keeps the first key, does not see. Repeated keys are refused,
cheaply: every key of the text ends in a quote followed by a colon, so counting those (at C
speed) bounds the keys the line holds from above; when that count equals the keys orjson
returned, no object repeats a key. Only a line where they differ (a repeat, or objects inside
lists, which the count of returned keys does not reach) is parsed a second time, by the
standard library, with each object's keys checked.

Errors are worded for people: the standard library's message says where the JSON breaks; what
only names an interpreter internal (``sys.set_int_max_str_digits()``) is said plainly.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import orjson

from monitor.errors import BadRecord, quoted

# a quote, whitespace, then a colon: how every key ends (an escaped quote inside a string value
# may also be followed by one, which only sends the line to the slow check)
_KEY_END = re.compile(rb'"[ \t\r\n]*:')
_LISTED_BYTES = 1 << 20  # lines up to this long have their key ends listed (faster), not iterated


def load(raw: bytes) -> Any:
    """The JSON value of ``raw``; BadRecord when it is not JSON or an object repeats a key."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise BadRecord(f"not valid JSON: {_json_error(raw, err)}.") from None
    if isinstance(data, dict) and _key_ends(raw) != _keys_through_objects(data):
        _refuse_repeated_keys(raw)
    return data


def may_hold_booleans_after(raw: bytes, key: bytes) -> bool:
    """False only when no ``true`` or ``false`` can be in the value of ``key`` (a JSON string as
    written, ``b'"array"'``), at the cost of a few memchr calls. A line without a backslash
    spells every key as it is written, so that value lies after the key's first occurrence, and
    a ``true`` or ``false`` there needs a 't' or an 'f' after it."""
    if raw.find(b"\\") >= 0:  # an escape may spell the key otherwise
        return True
    start = raw.find(key)
    if start < 0:
        return True
    start += len(key)
    return raw.find(b"t", start) >= 0 or raw.find(b"f", start) >= 0


def _key_ends(raw: bytes) -> int:
    """How many keys the text can hold at most (see the module's docstring)."""
    if len(raw) <= _LISTED_BYTES:
        return len(_KEY_END.findall(raw))
    return sum(1 for _ in _KEY_END.finditer(raw))  # no list: a long line may hold millions


def _keys_through_objects(data: dict[str, Any]) -> int:
    """Keys of ``data`` and of the objects reached from it through objects (not lists)."""
    count, objects = 0, [data]
    while objects:
        obj = objects.pop()
        count += len(obj)
        objects.extend(v for v in obj.values() if type(v) is dict)
    return count


def _refuse_repeated_keys(raw: bytes) -> None:
    def unrepeated(pairs: list[tuple[str, Any]]) -> None:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise BadRecord(f"the record repeats the key {quoted(key)}: each key appears once.")
            seen.add(key)

    try:
        json.loads(raw, object_pairs_hook=unrepeated)  # nothing is kept: the keys are checked
    except RecursionError:
        raise BadRecord("not valid JSON: arrays or objects nested too deeply.") from None
    except ValueError as err:  # orjson read it: only a number too long for int() is left
        raise BadRecord(f"not valid JSON: {_value_error(err)}.") from None


def _json_error(raw: bytes, err: orjson.JSONDecodeError) -> str:
    """Where and why JSON is invalid, in the standard library's words (orjson says less),
    else in orjson's (a byte order mark, NaN, a number beyond a double)."""
    try:
        json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as std:
        return str(std).rstrip(".")
    except RecursionError:
        return "arrays or objects nested too deeply"
    except ValueError as std:
        return _value_error(std)
    return str(err).splitlines()[0].rstrip(".") if str(err) else "unparseable"


def _value_error(err: ValueError) -> str:
    if "int_max_str_digits" in str(err):  # "Exceeds the limit (4300 digits) ... use sys.set_..."
        return f"a number of more than {sys.get_int_max_str_digits()} digits"
    return str(err).splitlines()[0].rstrip(".") if str(err) else "unparseable"
