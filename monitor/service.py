"""What every long-running service shares: ``/healthz`` and ``/metrics`` over HTTP, and
structured (JSON) logs.

``/healthz`` answers 200 when the service's threads are alive and the database and MLflow
answer, 503 with the failing part otherwise (a container orchestrator restarts on that).
``/metrics`` is Prometheus' text format from ``monitor.metrics.REGISTRY``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from sqlalchemy import text

from monitor.errors import first_line
from monitor.metrics import REGISTRY, watch_open_alerts

log = logging.getLogger(__name__)
CHECK_TIMEOUT = 5.0


def health(db, registry, alive: Callable[[], bool] = lambda: True) -> tuple[bool, dict[str, str]]:
    """(healthy, what each part said): the service itself, the database, MLflow."""
    parts: dict[str, str] = {"service": "ok" if alive() else "a service thread stopped"}
    try:
        with db.session() as s:
            s.execute(text("SELECT 1"))
        parts["database"] = "ok"
    except Exception as err:
        parts["database"] = first_line(err)[:300]
    try:
        registry.wait_until_reachable(attempts=1)
        parts["mlflow"] = "ok"
    except Exception as err:
        parts["mlflow"] = first_line(err)[:300]
    return all(v == "ok" for v in parts.values()), parts


def health_routes(db, registry, alive: Callable[[], bool] = lambda: True):
    """A WSGI app serving ``/healthz`` and ``/metrics`` (404 elsewhere)."""
    metrics = make_wsgi_app(REGISTRY)
    watch_open_alerts(db)

    def app(environ: dict[str, Any], start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == "/healthz":
            ok, parts = health(db, registry, alive)
            body = json.dumps({"status": "ok" if ok else "failing", **parts}).encode()
            status = "200 OK" if ok else "503 Service Unavailable"
            start_response(status, [("Content-Type", "application/json")])
            return [body]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /healthz or /metrics\n"]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds
        log.debug("health server: " + format, *args)


def start_health_server(
    host: str, port: int, db, registry, alive: Callable[[], bool] = lambda: True
) -> WSGIServer:
    """Serve ``/healthz`` and ``/metrics`` on a daemon thread; ``shutdown()`` stops it."""
    server = make_server(
        host,
        port,
        health_routes(db, registry, alive),
        server_class=_Server,
        handler_class=_QuietHandler,
    )
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("health and metrics on http://%s:%s/healthz and /metrics", host, server.server_port)
    return server


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
