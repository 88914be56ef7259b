"""Small UI pieces every page uses: badges, tables, empty figures, number formats, URLs, the
parsing of query parameters, and the escaping of text placed in figures."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
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


def plot_text(value: object) -> str:
    """``value`` as text that plotly shows literally: titles, axis and tick labels, legend names,
    hover text and annotations render a subset of HTML (links included), so ``<>&"'`` become
    entities plotly decodes back (it knows ``&amp; &lt; &gt;`` and numeric ones, not ``&quot;``).
    Every user-controlled string placed in a figure goes through here."""
    return str(value).translate(_PLOT_ENTITIES)


_PLOT_ENTITIES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&#34;", "'": "&#39;"})


def empty_figure(message: str) -> go.Figure:
    figure = go.Figure()
    figure.add_annotation(text=plot_text(message), showarrow=False, font={"color": "#6c757d"})
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


def single_values(layout: Callable[..., Any]) -> Callable[..., Any]:
    """A page layout whose URL parameters arrive one string each: Dash passes a list for a
    repeated parameter (``?page=1&page=2``), and the first one is kept."""

    @functools.wraps(layout)
    def with_single_values(**params: Any) -> Any:
        return layout(**{k: v[0] if isinstance(v, list) else v for k, v in params.items()})

    return with_single_values


MAX_PAGE = 1_000_000  # page numbers from URLs stay far below what a database offset holds
MAX_ID = 2**63 - 1  # the largest BIGINT: ids beyond it exist nowhere
_ASCII_DIGITS = re.compile(r"[0-9]+")


def integer(value: Any, default: int = 0, maximum: int = MAX_PAGE) -> int:
    """A query parameter as an int in [0, maximum]; ``default`` for what is not an integer
    written in ASCII (int() alone also reads other scripts' digits, "٣")."""
    text = str(value).strip() if value is not None else ""
    try:
        number = int(text) if text.isascii() else default
    except ValueError:  # not a number, or over Python's digit limit for int()
        return default
    return min(max(0, number), maximum)


def record_id(value: Any) -> int | None:
    """An id from a URL or a callback (client-controlled): a positive integer up to the largest
    BIGINT, as an int or a str of ASCII digits 0-9 only, else None (never raised: the page says
    it is not an id). One spelling per id: int() alone also reads "٣", "３", " 3" and "0_3"."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and len(value) <= 19 and _ASCII_DIGITS.fullmatch(value):
        number = int(value)
    else:
        return None
    return number if 0 < number <= MAX_ID else None


def clicked_id(cell: dict | None, data: list[dict] | None) -> int | None:
    """The id of the table row a click landed on (cell and data come from the browser)."""
    try:
        return record_id(data[cell["row"]]["id"]) if cell and data else None
    except (KeyError, IndexError, TypeError):
        return None


def fraction(value: Any) -> float | None:
    """A query parameter as a finite float in [0, 1], else None (no filter)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0.0 <= number <= 1.0 else None  # NaN fails both comparisons


def paged(
    fetch: Callable[[int], tuple[list[dict[str, Any]], int]], page: int, size: int
) -> tuple[list[dict[str, Any]], int, int]:
    """``fetch(page)`` -> (rows, total), with a page past the end moved to the last page:
    (rows, total, page shown)."""
    rows, total = fetch(page)
    last = max(0, -(-total // size) - 1)
    if page > last:
        page = last
        rows, total = fetch(page)
    return rows, total, page
