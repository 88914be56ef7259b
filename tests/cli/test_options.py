"""Option values the CLI refuses before doing anything: ports outside 1–65535 (which would
wrap around: 99999 bound 34463), filter values that match nothing by construction, and
durations beyond what a time can hold. One sentence, a non-zero exit."""

import pytest


@pytest.mark.parametrize(
    "args",
    [
        # a non-loopback --host: a command that got past its --port would stop at the exposure
        # check (no users), not serve
        ("dashboard", "--host", "192.0.2.1", "--port", "99999"),
        ("dashboard", "--host", "192.0.2.1", "--port", "0"),
        ("serve", "--host", "192.0.2.1", "--port", "65536"),
        ("demo", "--port", "99999"),
        ("worker", "--once", "--metrics-port", "70000"),
        ("scheduler", "--once", "--metrics-port", "-1"),
    ],
)
def test_ports_outside_1_to_65535_are_refused(home, robmon, args) -> None:
    option = args[-2]
    result = robmon(*args)
    assert result.code == 2, result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert error.startswith(f"Error: Invalid value for '{option}'")
    assert "65535" in error or "greater than or equal to" in error


def test_the_metrics_port_env_var_is_checked_too(home, robmon, monkeypatch) -> None:
    monkeypatch.setenv("ROBMON_METRICS_PORT", "99999")
    result = robmon("worker", "--once")
    assert result.code == 2
    assert "ROBMON_METRICS_PORT" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("audits", "list", "--status", "bogus"),
            "--status must be one of queued, running, succeeded, failed, interrupted, not 'bogus'.",
        ),
        (("inputs", "stats", "--by", "model"), "--by must be one of source, not 'model'."),
    ],
)
def test_unknown_filter_values_are_refused(home, robmon, args, message) -> None:
    result = robmon(*args, "--json")
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == f"error: {message}"


def test_every_audit_status_is_accepted(home, robmon) -> None:
    for status in ("queued", "running", "succeeded", "failed", "interrupted"):
        result = robmon("audits", "list", "--status", status, "--json")
        assert result.code == 0, result.stderr
        assert result.json() == []


@pytest.mark.parametrize(
    "command", [("inputs", "stats"), ("alerts", "list"), ("dead-letters", "list")]
)
@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("99999999999d", "'99999999999d' is too long: a duration is at most 999999999d."),
        ("999999999d", "'999999999d' reaches back before the year 1."),
    ],
)
def test_a_since_beyond_any_time_is_one_sentence(home, robmon, command, since, message) -> None:
    result = robmon(*command, "--since", since)
    assert result.code == 1
    assert result.stderr.strip() == f"error: {message}"


LIST_COMMANDS = [
    ("dead-letters", "list"),
    ("alerts", "list"),
    ("audits", "list"),
    ("inputs", "stats"),
    ("gate", "history", "digits-cnn"),
]


@pytest.mark.parametrize("command", LIST_COMMANDS)
@pytest.mark.parametrize(
    ("limit", "given"),
    [
        ("99999999999999999999", "99999999999999999999"),  # OverflowError in SQLite (pentest 17)
        ("1000001", "1000001"),
        ("0", "0"),
        ("-1", "-1"),
        ("9" * 100, "a 100-digit number"),
    ],
)
def test_a_limit_outside_the_shared_bound_is_one_sentence(
    home, robmon, command, limit, given
) -> None:
    result = robmon(*command, "--limit", limit)
    assert result.code == 1
    assert result.stderr.strip() == f"error: --limit must be between 1 and 1,000,000, not {given}."


@pytest.mark.parametrize("command", LIST_COMMANDS)
def test_the_largest_limit_is_accepted(home, robmon, command) -> None:
    result = robmon(*command, "--limit", "1000000", "--json")
    assert result.code == 0, result.stderr
