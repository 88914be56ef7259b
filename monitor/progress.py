"""How long-running library code reports progress without knowing who listens.

A reporter is called as ``report(task, done, total)``: ``task`` names the piece of work (one bar
per distinct name), ``done`` of ``total`` units are finished (``total`` None when unknown). The
CLI turns these calls into progress bars on a terminal; elsewhere they are dropped or logged.
"""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[str, float, float | None], None]


def silent(task: str, done: float, total: float | None) -> None:
    """A reporter that ignores everything."""
