"""A record's named fields (pentest 2026-11-29, findings 1, 3 and 4): one canonical spelling of a
version, plain text for source, model and id, and reasons that quote a bounded part of a value."""

import json
from pathlib import Path

import pytest

from monitor.errors import BadRecord, quoted
from monitor.ingest.records import Limits, parse_record
from tests.ingest.lines import record


@pytest.fixture
def limits(tmp_path: Path) -> Limits:
    (tmp_path / "root").mkdir(exist_ok=True)
    return Limits(input_root=tmp_path / "root")


def _with(**fields) -> str:
    data = json.loads(record(inp={"array": [[0.1, 0.2], [0.3, 0.4]]}))
    data.update(fields)
    return json.dumps(data)


@pytest.mark.parametrize(
    ("version", "canonical"),
    [("1", "1"), ("01", "1"), ("001", "1"), (1, "1"), ("2147483647", "2147483647"),
     ("champion", "champion"), ("v1.2-rc_3", "v1.2-rc_3")],
)  # fmt: skip
def test_a_version_has_one_spelling(limits, version, canonical) -> None:
    assert parse_record(_with(version=version), limits).version == canonical


@pytest.mark.parametrize(
    ("version", "reason"),
    [
        ("٠١", "is not written in ASCII digits"),
        ("١", "is not written in ASCII digits"),
        ("１", "is not written in ASCII digits"),
        ("999999999999999999999999", "version 99999999999999999999… is out of range"),
        ("2147483648", "version 2147483648 is out of range"),
        (2**40, "is out of range"),
        (-1, "version -1 is out of range"),
        ("0", "version 0 is out of range"),
        (True, "version must be a number or an alias"),
        (1.0, "version must be a number or an alias"),
        ("a:b", "is neither a number nor an alias"),
        ("a/b", "is neither a number nor an alias"),
        (" 1", "is neither a number nor an alias"),
        ("+1", "is neither a number nor an alias"),
    ],
)
def test_a_version_spelled_otherwise_is_refused(limits, version, reason) -> None:
    with pytest.raises(BadRecord, match=reason):
        parse_record(_with(version=version), limits)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"model": "a:b"}, "model 'a:b' is not a model name"),
        ({"model": "a/b"}, "model 'a/b' is not a model name"),
        ({"model": " digits-cnn"}, "has surrounding whitespace"),
        ({"model": "digits-cnn\n"}, r"model holds a control character \(U\+000A\)"),
        ({"source": "10.0.0.1\x00"}, r"source holds a control character \(U\+0000\)"),
        ({"source": "10.0.0.1\x1b[31m"}, r"source holds a control character \(U\+001B\)"),
        ({"source": "10.0.0.1\x85"}, r"source holds a control character \(U\+0085\)"),
        ({"source": "evil\u202etxt.exe"}, r"source holds a Unicode format character \(U\+202E\)"),
        ({"source": "10.0.0.1\u200b"}, r"source holds a Unicode format character \(U\+200B\)"),
        ({"source": "a\u2028b"}, r"source holds a line separator"),
        ({"source": "s" * 256}, "source must be a string of 1 to 255 characters"),
        ({"id": True}, "id must be a string of 1 to 255 characters or an integer"),
        ({"id": 1.5}, "id must be a string of 1 to 255 characters or an integer"),
        ({"id": "r\x00"}, r"id holds a control character \(U\+0000\)"),
        ({"id": "r\ufeff"}, r"id holds a Unicode format character \(U\+FEFF\)"),
        ({"id": "i" * 256}, "id must be a string of 1 to 255 characters"),
    ],
)
def test_text_fields_are_plain_text(limits, fields, reason) -> None:
    with pytest.raises(BadRecord, match=reason):
        parse_record(_with(**fields), limits)


def test_plain_text_passes_as_written(limits) -> None:
    parsed = parse_record(_with(source="10.0.0.1 (café)", model="m", id=" x "), limits)
    assert (parsed.source, parsed.model, parsed.request_id) == ("10.0.0.1 (café)", "m", " x ")
    assert parse_record(_with(id=42), limits).request_id == "42"


@pytest.mark.parametrize(
    "fields",
    [
        {"input": {"path": "x/" * 50_000 + "a.png"}},
        {"ts": "2026-11-24T19:00:00Z" + "9" * 50_000},
        {"version": "ab" * 50_000},
        {"model": "m" * 200 + ":"},
    ],
)
def test_reasons_quote_at_most_80_characters_of_a_value(limits, fields) -> None:
    with pytest.raises(BadRecord) as caught:
        parse_record(_with(**fields), limits)
    reason = str(caught.value)
    assert len(reason) < 250 and "…" in reason and "\n" not in reason, reason


def test_quoted_cuts_long_values_and_escapes_control_characters() -> None:
    assert quoted("abc") == "'abc'"
    assert quoted("a\x00b") == "'a\\x00b'"
    long = quoted("x" * 1000)
    assert len(long) == 80 and long.endswith("…'")
