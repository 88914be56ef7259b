"""The evidence pieces of the incident view: the rules that fired, evidence values as text, the
sources' activity around the window, and the kept flagged inputs."""

from __future__ import annotations

import dash_bootstrap_components as dbc
import plotly.graph_objects as go
from dash import html

from dashboards import queries
from dashboards.components import badge, empty_figure
from dashboards.context import current
from monitor.alerts.queries import AlertDetail


def findings_table(findings: dict) -> dbc.Table | None:
    """The incident's evidence, one row per rule (and model) that fired."""
    if not findings:
        return None
    head = html.Thead(html.Tr([html.Th(h) for h in ("rule", "model", "severity", "why")]))
    rows = [
        html.Tr(
            [
                html.Td(f["rule"]),
                html.Td(f["model"]),
                html.Td(badge(f["severity"])),
                html.Td(f["summary"]),
            ]
        )
        for f in findings.values()
    ]
    return dbc.Table([head, html.Tbody(rows)], size="sm", id="alerts-findings")


def evidence_value(value: object) -> str:
    """An evidence value as text: floats to 3 significant digits, lists comma-separated."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def timeline_figure(alert: AlertDetail) -> go.Figure:
    """The incident's sources' inputs and flagged inputs per minute, its window shaded."""
    if not alert.timeline:
        return empty_figure("no activity")
    figure = go.Figure()
    figure.add_bar(
        x=[p["bucket"] for p in alert.timeline],
        y=[p["inputs"] for p in alert.timeline],
        name="inputs",
        marker_color="#adb5bd",
    )
    figure.add_bar(
        x=[p["bucket"] for p in alert.timeline],
        y=[p["flagged"] for p in alert.timeline],
        name="flagged",
        marker_color="#dc3545",
    )
    figure.add_vrect(
        x0=alert.window_start,
        x1=alert.window_end,
        fillcolor="#ffc107",
        opacity=0.15,
        line_width=0,
        annotation_text="alert window",
    )
    figure.update_layout(
        barmode="overlay",
        height=250,
        margin={"l": 40, "r": 10, "t": 30, "b": 30},
        legend={"orientation": "h"},
        title="inputs per minute",
    )
    return figure


def kept_thumbnails(score_ids: list[int]) -> html.Div:
    """The incident's kept flagged inputs as 64-pixel thumbnails with their predictions."""
    kept = queries.kept_inputs(current().db, score_ids)
    if not kept:
        return html.P(
            "No flagged inputs kept for this alert (ingest with --keep-flagged).",
            className="small text-muted",
        )
    return html.Div(
        [
            html.Figure(
                [
                    html.Img(
                        src=f"/kept/{k['id']}.png",
                        style={
                            "width": "64px",
                            "height": "64px",
                            "imageRendering": "pixelated",
                            "border": "1px solid #dee2e6",
                        },
                    ),
                    html.Figcaption(
                        f"→ {k['predicted']}" + (" (converted)" if k["conversion"] else ""),
                        className="small text-center",
                    ),
                ],
                title=k["conversion"] or None,  # e.g. "resized 512×512→224×224 (crop); L→RGB"
                className="me-2 d-inline-block",
            )
            for k in kept
        ],
        id="alerts-thumbnails",
    )
