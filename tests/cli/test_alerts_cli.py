"""`robmon alerts` refuses values it does not know (one sentence naming the accepted ones)
instead of answering an empty list."""

import pytest


@pytest.mark.parametrize(
    ("option", "value", "accepted"),
    [
        ("--status", "bogus", "open, acknowledged, resolved, false-positive, active"),
        ("--severity", "extreme", "critical, high, medium, low"),
        ("--rule", "nonsense", "flagged-rate, low-confidence, probing, probing-distributed"),
    ],
)
def test_list_refuses_unknown_filter_values(home, robmon, option, value, accepted) -> None:
    result = robmon("alerts", "list", option, value, "--json")
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (f"error: {option} must be one of {accepted}, not {value!r}.")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--status", "active"),
        ("--status", "false-positive"),
        ("--status", "false_positive"),
        ("--severity", "critical"),
        ("--rule", "probing-distributed"),
    ],
)
def test_list_accepts_every_documented_value(home, robmon, option, value) -> None:
    result = robmon("alerts", "list", option, value, "--json")
    assert result.code == 0, result.stderr
    assert result.json() == []


def test_list_refuses_a_limit_below_one(home, robmon) -> None:
    result = robmon("alerts", "list", "--limit", "-1")
    assert result.code == 1
    assert result.stderr.strip() == "error: --limit must be between 1 and 1,000,000, not -1."


@pytest.mark.parametrize("command", ["show", "ack"])
def test_an_id_beyond_any_database_is_not_found(home, robmon, command) -> None:
    extra = ("--by", "ana") if command == "ack" else ()
    result = robmon("alerts", command, "99999999999999999999", *extra)
    assert result.code == 1
    assert result.stderr.strip() == (
        "error: there is no alert 99999999999999999999 (see `robmon alerts list`)."
    )
