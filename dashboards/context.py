"""What the pages read from: the database (and the registry for aliases), opened by create_app.
Nothing is opened or loaded at import time."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from monitor.config import Settings
from monitor.db.session import Database

ALIAS_TTL_SECONDS = 60.0


@dataclass
class DashboardContext:
    settings: Settings
    db: Database
    _aliases: dict[str, tuple[float, dict[str, str]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _registry: Any = None

    def aliases(self, model: str) -> dict[str, str]:
        """A model's aliases from MLflow, cached for a minute ({} when MLflow is unreachable)."""
        from monitor.errors import RobmonError

        with self._lock:
            cached = self._aliases.get(model)
            if cached and time.monotonic() - cached[0] < ALIAS_TTL_SECONDS:
                return cached[1]
        try:
            aliases = self.registry().aliases(model)
        except RobmonError:
            aliases = {}
        with self._lock:
            self._aliases[model] = (time.monotonic(), aliases)
        return aliases

    def registry(self) -> Any:
        """The MLflow registry client, made on first use."""
        if self._registry is None:
            from monitor.registry import Registry

            self._registry = Registry(self.settings)
        return self._registry

    def mlflow_run_url(self, run_id: str | None) -> str | None:
        uri = self.settings.mlflow_tracking_uri
        if not run_id or not uri.startswith(("http://", "https://")):
            return None
        return f"{uri.rstrip('/')}/#/runs/{run_id}"


_context: DashboardContext | None = None


def install(context: DashboardContext) -> None:
    global _context
    _context = context


def current() -> DashboardContext:
    if _context is None:
        raise RuntimeError("the dashboard has no context (dashboards.app.create_app)")
    return _context
