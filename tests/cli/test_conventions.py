"""CLI conventions: one sentence on stderr and a non-zero exit; traceback only with --debug."""

import subprocess
import sys


def test_unknown_model_is_one_line_on_stderr(demo_home, robmon) -> None:
    result = robmon("models", "list", "no-such-model")
    assert result.code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no-such-model" in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_adds_the_traceback(demo_home, robmon) -> None:
    result = robmon("--debug", "models", "list", "no-such-model")
    assert result.code == 1
    assert "Traceback" in result.stderr


def test_console_script_entry_point(home) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "db", "current", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"head"' in result.stdout


def test_usage_error_exits_2(home, robmon) -> None:
    result = robmon("db", "frobnicate")
    assert result.code == 2
