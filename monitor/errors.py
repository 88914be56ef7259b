"""User-facing errors: each carries one sentence the CLI prints as is.

    RobmonError                 anything a user can fix; never a programmer mistake
    ├── ConfigError             bad environment variable or robmon.toml entry
    ├── DatabaseError           database unreachable or unusable
    │   └── DatabaseOutOfDate   an external database is behind the code's schema
    ├── RegistryError           MLflow answered, but not with what was asked for
    │   ├── RegistryUnavailable the tracking server could not be reached (after retries)
    │   └── ModelNotFound       unknown model, version or alias
    ├── ModelIncompatible       a model that cannot be audited or scored as asked
    ├── DatasetError            a dataset that cannot be read or is not valid pixel data
    ├── AuditError              an audit that could not run (bad options, failed attack)
    ├── NotFound                an id (audit, alert, ...) that does not exist
    ├── BadRecord               a production record that cannot be scored (goes to dead_letters)
    └── PolicyError             a gate policy file that is not valid

Each class documents when it is raised; the CLI maps every RobmonError to exit status 1
(``exit_code`` overrides it, e.g. 2 for "could not decide" in the gate).
"""

from __future__ import annotations


class RobmonError(Exception):
    """Base of every error a user can act on; ``str(err)`` is one sentence."""

    exit_code: int = 1


class ConfigError(RobmonError):
    """Raised when an environment variable or a robmon.toml entry is invalid."""


class DatabaseError(RobmonError):
    """Raised when the database cannot be reached or used."""


class DatabaseOutOfDate(DatabaseError):
    """Raised when an external database's schema is behind this version of robmon."""


class RegistryError(RobmonError):
    """Raised when MLflow answers with something unusable."""


class RegistryUnavailable(RegistryError):
    """Raised when the MLflow tracking server cannot be reached after bounded retries."""


class ModelNotFound(RegistryError):
    """Raised for an unknown registered model, version or alias."""


class ModelIncompatible(RobmonError):
    """Raised when a model cannot take the data it is given (shape, classes, outputs)."""


class DatasetError(RobmonError):
    """Raised when a dataset is missing, unreadable or not valid pixel data in [0, 1]."""


class AuditError(RobmonError):
    """Raised when an audit cannot run as configured."""


class NotFound(RobmonError):
    """Raised when an id given on the command line does not exist."""


class BadRecord(RobmonError):
    """Raised for a production record that cannot be scored; it is dead-lettered, not fatal.

    ``source`` and ``model``: what the record named, when it got that far (kept with the dead
    letter, so that hostile records can be traced to their sender)."""

    def __init__(self, message: str, source: str | None = None, model: str | None = None):
        super().__init__(message)
        self.source, self.model = source, model


class PolicyError(RobmonError):
    """Raised for an invalid gate policy; the gate exits 2 (could not decide)."""

    exit_code = 2


QUOTE_LIMIT = 80  # characters of a value that a reason quotes


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of a value a message quotes, cut to ``limit`` characters with "…" (a reason
    quoting a record's 100 KB path stays one readable sentence; control characters stay escaped)."""
    text = repr(value if isinstance(value, str) else str(value))
    return text if len(text) <= limit else text[: limit - 2] + "…" + text[0]


def first_line(err: BaseException) -> str:
    """The first line of an error's message (a database error's driver message when it has
    one); the error's type when the message is empty."""
    lines = str(getattr(err, "orig", None) or err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


class EndpointError(RobmonError):
    """Raised when a model served over HTTP (``mlflow models serve``) cannot be queried: a bad
    URL or option, an unreachable server (after bounded retries), an HTTP error or redirect, or
    an answer that is not predictions for the rows sent."""
