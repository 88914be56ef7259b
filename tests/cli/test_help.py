"""`--help` works for every robmon command and subcommand (help text is rich markup: a stray
"[/DB]" once made `robmon ingest --help` crash with a MarkupError)."""

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
