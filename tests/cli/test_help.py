"""`--help` works for every robmon command and subcommand (help text is rich markup: a stray
"[/DB]" once made `robmon ingest --help` crash with a MarkupError)."""

import re
from typing import Any

import typer

from tests.conftest import run_robmon


def _command_paths() -> list[tuple[str, ...]]:
    """Every command path of the robmon app, groups included, found by walking the tree."""
    from monitor.cli import app

    paths: list[tuple[str, ...]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:  # Typer's own click classes
        paths.append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return paths


def test_every_command_has_working_help(home) -> None:
    paths = _command_paths()
    assert ("ingest",) in paths and ("alerts", "list") in paths and len(paths) > 30
    failures = {}
    for path in paths:
        result = run_robmon(*path, "--help")
        if result.code != 0 or "Usage" not in result.stdout:
            failures[" ".join(path) or "robmon"] = (result.code, result.stderr.strip()[-300:])
    assert not failures, failures


def _help_sources(path: tuple[str, ...]) -> list[str]:
    """The help texts written for one command: its docstring and its parameters' help."""
    from monitor.cli import app

    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    params = [p for p in command.params if getattr(p, "help", None)]
    return [command.help or "", *(p.help for p in params)]


def test_help_keeps_every_bracketed_word(home) -> None:
    """Help is plain text: "[alerts]" or "[ingest].paths" is printed as written, not eaten as
    rich markup, and wrapped rather than cut ("ROBMON_REDIS_STREA…")."""
    missing = {}
    for path in _command_paths():
        rendered = " ".join(run_robmon(*path, "--help").stdout.split())
        for text in _help_sources(path):
            for word in re.findall(r"\S*\[[^\]\s]+\]\S*", text):
                if word.rstrip(".,;)") not in rendered:
                    missing.setdefault(" ".join(path) or "robmon", []).append(word)
    assert not missing, missing
    config = " ".join(run_robmon("config", "--help").stdout.split())
    assert "an invalid [alerts] table" in config
    assert "Do not follow [ingest].paths." in run_robmon("serve", "--help").stdout
    ingest = run_robmon("ingest", "--help").stdout
    assert "ROBMON_REDIS_STREAM]" in ingest and "…" not in ingest


def test_command_lists_show_each_first_sentence_whole(home) -> None:
    """Group help lists every command with its first sentence, wrapped, never cut with "..."."""
    for path in _command_paths():
        shown = run_robmon(*path, "--help").stdout
        if "Commands:" in shown:
            assert "..." not in shown.split("Commands:", 1)[1], " ".join(path)
    listing = " ".join(run_robmon("--help").stdout.split())
    assert "config Print the effective settings (passwords and URL tokens masked) and where" in (
        listing
    )
