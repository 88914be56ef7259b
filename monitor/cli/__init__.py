"""The ``robmon`` command line: parse, call the library, render tables or --json. Nothing else.

Errors: a ``RobmonError`` prints its one sentence on stderr and exits with its exit code (1, or
2 where a command documents it); anything else is a bug and says so. ``--debug`` adds the
traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

import typer
from sqlalchemy.exc import SQLAlchemyError

from monitor.cli import (  # noqa: F401  (each module registers its commands on the app)
    admin,
    alerts,
    audits,
    dashboard,
    deadletters,
    gate,
    guard,
    harden,
    models,
    monitoring,
    operations,
)
from monitor.cli.base import app, state
from monitor.errors import RobmonError, first_line


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
    log_format: str = typer.Option(
        "text",
        "--log-format",
        envvar="ROBMON_LOG_FORMAT",
        help="text, or json (one object per line, for log collectors).",
    ),
) -> None:
    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    state.debug = debug or os.environ.get("ROBMON_DEBUG", "") not in ("", "0")
    state.verbose = verbose
    _configure_logging(state.debug, verbose, log_format)


def _configure_logging(debug: bool, verbose: bool, log_format: str = "text") -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler()
    if log_format == "json":
        from monitor.service import JsonFormatter

        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    logging.getLogger("monitor").setLevel(logging.NOTSET)  # a service's INFO ends with its run
    for noisy in ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "apscheduler"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        warnings.filterwarnings("ignore")


def main() -> None:
    """Entry point of the ``robmon`` console script.

    Typer handles usage errors (exit 2) and --help itself; robmon's own errors arrive here.
    """
    code = 0
    state.reset()
    try:
        app()  # standalone: exits with the command's status
    except RobmonError as err:
        if state.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        code = 130
    except SQLAlchemyError as err:  # the database refused: its own words, in one line
        if state.debug:
            traceback.print_exc()
        detail = first_line(err).rstrip(".")
        print(
            f"error: the database failed: {detail} (run with --debug for the traceback).",
            file=sys.stderr,
        )
        code = 1
    except Exception as err:  # a bug: say so in one line, traceback on request
        if state.debug:
            traceback.print_exc()
        print(
            f"error: unexpected {type(err).__name__}: {first_line(err)} "
            "(run with --debug for the traceback).",
            file=sys.stderr,
        )
        code = 1
    finally:
        state.close()
    sys.exit(code)
