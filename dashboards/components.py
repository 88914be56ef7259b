"""Small UI pieces every page uses: badges, tables, empty figures, number formats, URLs."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import dash_bootstrap_components as dbc
import plotly.graph_objects as go
from dash import dash_table, html

SEVERITY_COLORS = {"critical": "danger", "high": "warning", "medium": "info", "low": "secondary"}
STATUS_COLORS = {
    "open": "danger",
    "acknowledged": "warning",
    "resolved": "success",
    "false_positive": "secondary",
    "succeeded": "success",
    "failed": "danger",
    "running": "primary",
    "queued": "secondary",
    "interrupted": "warning",
    "passed": "success",
    "warning": "warning",
    "skipped": "secondary",
    "undecided": "secondary",
    "rolled-back": "secondary",
}
TABLE_STYLE = {
    "style_table": {"overflowX": "auto"},
    "style_cell": {
        "fontFamily": "system-ui, sans-serif",
        "fontSize": "0.85rem",
        "padding": "4px 8px",
        "textAlign": "left",
        "whiteSpace": "normal",
        "height": "auto",
        "maxWidth": "520px",
    },
    "style_header": {"fontWeight": "600", "backgroundColor": "#f1f3f5"},
    "style_data_conditional": [
        {"if": {"state": "active"}, "backgroundColor": "#e7f1ff", "border": "1px solid #0d6efd"}
    ],
}


def badge(text: str, color: str | None = None) -> dbc.Badge:
    label = text.replace("_", " ")
    return dbc.Badge(
        label,
        color=color or STATUS_COLORS.get(text, SEVERITY_COLORS.get(text, "secondary")),
        className="me-1",
        pill=True,
    )


def number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M")


def empty_figure(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=message, showarrow=False, font={"color": "#6c757d"})
    figure.update_layout(
        xaxis={"visible": False},
        yaxis={"visible": False},
        height=260,
        margin={"l": 10, "r": 10, "t": 10, "b": 10},
        plot_bgcolor="white",
    )
    return figure


def page_header(title: str, subtitle: str) -> html.Div:
    return html.Div(
        [html.H2(title, className="h4 mb-1"), html.P(subtitle, className="text-muted small mb-3")]
    )


def server_table(
    table_id: str,
    columns: list[tuple[str, str]],
    rows: list[dict[str, Any]],
    total: int,
    page: int,
    size: int,
    sort: str | None = None,
    descending: bool = True,
) -> dash_table.DataTable:
    """A DataTable paginated and sorted on the server (the URL holds page and sort)."""
    return dash_table.DataTable(
        id=table_id,
        columns=[{"name": label, "id": key} for key, label in columns],
        data=rows,
        page_action="custom",
        page_current=page,
        page_size=size,
        page_count=max(1, -(-total // size)),
        sort_action="custom",
        sort_mode="single",
        sort_by=[{"column_id": sort, "direction": "desc" if descending else "asc"}] if sort else [],
        **TABLE_STYLE,
    )


def url(path: str, **params: Any) -> str:
    """A deep link keeping every filter that has a value."""
    kept = {k: v for k, v in params.items() if v not in (None, "", [], 0, False)}
    return f"{path}?{urlencode(kept)}" if kept else path


def integer(value: Any, default: int = 0) -> int:
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return default
