"""Files the app serves itself (nothing is fetched from a CDN): Bootstrap 5's stylesheet from
the installed Bootstrap-Flask package, audit plots from the database, kept flagged inputs; and
``/healthz`` and ``/metrics`` like every robmon service. Also what every response carries
(security headers) and how bad requests are answered (400/404 with one log line, no traceback).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from dash.exceptions import DependencyException
from flask import Flask, Response, abort, request, send_file
from sqlalchemy.exc import DataError
from werkzeug.exceptions import HTTPException

from dashboards.context import current
from monitor.errors import first_line

log = logging.getLogger(__name__)

# What a callback raises when the browser sent something no page produces (a text where an id
# goes, a page number beyond any integer column): the request's fault, answered with 400.
BAD_CALLBACK_INPUT = (ValueError, TypeError, KeyError, IndexError, OverflowError, DataError)


def bootstrap_css() -> Path:
    import flask_bootstrap

    return Path(flask_bootstrap.__file__).parent / "static/bootstrap5/css/bootstrap.min.css"


def install(server: Flask) -> None:
    @server.route("/vendor/bootstrap.min.css")
    def vendor_bootstrap() -> Response:
        return send_file(bootstrap_css(), mimetype="text/css", max_age=86400)

    @server.route("/artifacts/<int:audit_id>/<name>")
    def artifact(audit_id: int, name: str) -> Response:
        from monitor.audit.store import get_artifact
        from monitor.errors import NotFound

        try:
            content_type, data = get_artifact(current().db, audit_id, name)
        except NotFound:
            abort(404)
        return Response(data, mimetype=content_type, headers={"Cache-Control": "max-age=3600"})

    @server.route("/healthz")
    def healthz() -> Response:
        from monitor.service import health

        context = current()
        ok, parts = health(context.db, context.registry())
        return Response(
            json.dumps({"status": "ok" if ok else "failing", **parts}),
            status=200 if ok else 503,
            mimetype="application/json",
        )

    @server.route("/metrics")
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        from monitor.metrics import REGISTRY, watch_open_alerts

        watch_open_alerts(current().db)
        return Response(generate_latest(REGISTRY), mimetype=CONTENT_TYPE_LATEST)

    @server.route("/kept/<int:score_id>.png")
    def kept(score_id: int) -> Response:
        from dashboards.queries import kept_path

        path = kept_path(current().db, score_id)
        if not path or not Path(path).is_file():
            abort(404)
        return send_file(path, mimetype="image/png", max_age=3600)


@functools.lru_cache(maxsize=8)
def content_security_policy(inline_script_hashes: tuple[str, ...]) -> str:
    """Everything from this server only. Scripts: the app's files plus the hashes of Dash's
    inline scripts (the renderer's start), no 'unsafe-inline' and no 'unsafe-eval'. Styles need
    'unsafe-inline': React and Plotly set style attributes and inject <style> elements."""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self' " + " ".join(inline_script_hashes),
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def install_security(server: Flask, inline_script_hashes: Callable[[], Sequence[str]]) -> None:
    """Security headers on every response, and 400/404 for bad requests instead of 500.

    ``inline_script_hashes`` is asked per response: Dash adds inline scripts (the page title's
    clientside callback) when it sets itself up on the first request, after create_app."""
    headers = {
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }

    @server.after_request
    def _headers(response: Response) -> Response:
        policy = content_security_policy(tuple(inline_script_hashes()))
        response.headers.setdefault("Content-Security-Policy", policy)
        for name, value in headers.items():
            response.headers.setdefault(name, value)
        return response

    @server.before_request
    def _callback_envelope() -> Response | None:
        if request.method != "POST" or not request.path.endswith("/_dash-update-component"):
            return None
        problem = _callback_envelope_problem(request.get_json(silent=True))
        if problem:
            log.warning("400 callback: %s", problem)
            return Response(json.dumps({"error": problem}), status=400, mimetype="application/json")
        return None

    @server.errorhandler(DependencyException)
    def _unknown_component_file(_err: DependencyException) -> Response:
        log.warning("404 %s: not a file of a registered component", request.path)
        return Response("not found\n", status=404, mimetype="text/plain")

    def _bad_callback_input(err: Exception) -> Response | HTTPException:
        if isinstance(err, HTTPException):  # werkzeug's BadRequestKeyError is a KeyError too
            return err
        if not request.path.endswith("/_dash-update-component"):
            raise err  # anywhere else it is a bug: 500 with its traceback
        body = request.get_json(silent=True)
        output = body.get("output", "?") if isinstance(body, dict) else "?"
        log.warning(
            "400 callback %s: %s: %s", str(output)[:200], type(err).__name__, first_line(err)
        )
        return Response(
            json.dumps({"error": "invalid input"}), status=400, mimetype="application/json"
        )

    for error in BAD_CALLBACK_INPUT:
        server.register_error_handler(error, _bad_callback_input)


def _callback_envelope_problem(body: object) -> str | None:
    """What is wrong with a callback request's outer shape, which Dash takes on trust (None:
    nothing; what is inside is the callbacks' to check)."""
    if not isinstance(body, dict):
        return "the body is not a JSON object"
    if not isinstance(body.get("output"), str):
        return "output is not a string"
    for key in ("inputs", "state", "changedPropIds"):
        if not isinstance(body.get(key, []), list):
            return f"{key} is not a list"
    if not isinstance(body.get("outputs", {}), dict | list):
        return "outputs is neither an object nor a list"
    return None
