"""What every command shares: the Typer app, lazily opened resources, rendering, progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import typer
from typer.core import TyperGroup

from monitor.errors import RobmonError

if TYPE_CHECKING:
    from monitor.config import Settings
    from monitor.db.session import Database
    from monitor.progress import Reporter
    from monitor.registry import Registry


class HelpGroup(TyperGroup):
    """A command group whose --help lists each command with its first sentence whole (click
    cuts it to the width left over, "Print the effective settings (passwords and URL...")."""

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        rows = [
            (name, command.get_short_help_str(limit=10_000))
            for name, command in commands
            if command is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="robmon",
    cls=HelpGroup,
    help="Robustness Monitor: adversarial audits of MLflow models, production input monitoring, "
    "per-source alerts and release gates.",
    no_args_is_help=True,
    # help is plain text, shown as written and wrapped (never cut) by click: with rich markup,
    # "[alerts]" or "[ingest].paths" lost their brackets and long words were truncated with "…"
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command_group(name: str, **options: Any) -> typer.Typer:
    """A group of subcommands, ``robmon NAME ...``, whose help is plain text like the app's."""
    options.setdefault("cls", HelpGroup)
    group = typer.Typer(no_args_is_help=True, rich_markup_mode=None, **options)
    app.add_typer(group, name=name)
    return group


JSON_OPTION = typer.Option(False, "--json", help="Print the result as JSON on stdout.")

# a port beyond 65535 would wrap around (99999 binds 34463) while robmon announces 99999
PORT_RANGE: dict[str, Any] = {"min": 1, "max": 65535}
METRICS_PORT = typer.Option(
    None,
    min=0,
    max=65535,
    envvar="ROBMON_METRICS_PORT",
    help="Serve /healthz and /metrics (Prometheus) on this port (0: any free port).",
)
METRICS_HOST = typer.Option(
    "127.0.0.1", envvar="ROBMON_METRICS_HOST", help="Address for /healthz and /metrics."
)

# the most rows a list command shows: beyond it the database's INTEGER overflows (SQLite's is
# 64-bit), and no table of a million rows is read by a person anyway
MAX_LIMIT = 1_000_000


def check_limit(value: int) -> int:
    """A list command's --limit, 1 to MAX_LIMIT; anything else is refused in one sentence."""
    if not 1 <= value <= MAX_LIMIT:
        given = str(value) if len(str(value)) <= 30 else f"a {len(str(abs(value)))}-digit number"
        raise RobmonError(f"--limit must be between 1 and {MAX_LIMIT:,}, not {given}.")
    return value


def limit_option(default: int, help: str) -> Any:
    """The --limit option of a list command (checked by ``check_limit`` as it is parsed)."""
    return typer.Option(default, help=help, callback=check_limit)


@dataclass
class State:
    """Resources opened on first use and shared by one command invocation."""

    debug: bool = False
    verbose: bool = False
    _settings: Settings | None = None
    _database: Database | None = None
    _registry: Registry | None = None
    cleanups: list[Any] = field(default_factory=list)

    def settings(self) -> Settings:
        if self._settings is None:
            from monitor.config import load_settings

            self._settings = load_settings()
        return self._settings

    def database(self) -> Database:
        if self._database is None:
            from monitor.db.session import open_database

            self._database = open_database(self.settings())
        return self._database

    def registry(self) -> Registry:
        if self._registry is None:
            from monitor.registry import Registry

            self._registry = Registry(self.settings())
        return self._registry

    def close(self) -> None:
        if self._database is not None:
            self._database.dispose()

    def reset(self) -> None:
        """Forget every opened resource (one process may run several commands in tests)."""
        self.close()
        self.debug = self.verbose = False
        self._settings = self._database = self._registry = None


state = State()


def check_choice(
    option: str,
    value: str | None,
    accepted: Sequence[str],
    aliases: Mapping[str, str] | None = None,
) -> str | None:
    """The accepted spelling of a filter value; a value that matches nothing by construction is
    refused in one sentence naming the accepted ones (rather than answered with an empty list)."""
    if value is None:
        return None
    chosen = (aliases or {}).get(value, value)
    if chosen not in accepted:
        raise RobmonError(f"{option} must be one of {', '.join(accepted)}, not {value!r}.")
    return chosen


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for dataclasses, datetimes, paths and numpy/torch scalars."""
    from dataclasses import asdict, is_dataclass

    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def emit_json(value: Any) -> None:
    """Write ``value`` as indented JSON on stdout."""
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A rich table on stdout; ``None`` renders as an empty cell."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:  # Text: a cell such as "[pgd linf 0.1]" is not rich markup
        table.add_row(*(Text("" if v is None else str(v)) for v in row))
    _stdout_console().print(table)


def _stdout_console():
    """A console on stdout; wide when stdout is a file or a pipe (no terminal to fit)."""
    from rich.console import Console

    return Console(highlight=False, width=None if sys.stdout.isatty() else 200)


def say(message: str) -> None:
    """A line of human-readable output on stdout (not used with --json)."""
    _stdout_console().print(message, markup=False)


def note(message: str) -> None:
    """A status line on stderr, so that stdout stays machine-readable."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Reporter]:
    """A Reporter drawing one rich progress bar per task on stderr, when stderr is a terminal."""
    from monitor.progress import silent

    if not enabled or not sys.stderr.isatty():
        yield silent
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bars:

        def report(task: str, done: float, total: float | None) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total)

        yield report


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table cell (blank when missing)."""
    if value is None:
        return ""
    return f"{value:.{digits}f}"
