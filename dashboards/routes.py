"""Files the app serves itself (nothing is fetched from a CDN): Bootstrap 5's stylesheet from
the installed Bootstrap-Flask package, audit plots from the database, kept flagged inputs; and
``/healthz`` and ``/metrics`` like every robmon service."""

from __future__ import annotations

import json
from pathlib import Path

from flask import Flask, Response, abort, send_file

from dashboards.context import current


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
