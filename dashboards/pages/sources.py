"""Sources: per-source statistics sorted, filtered and paginated in the database, a source's
time series, and histograms of confidence and squeezing divergence with the thresholds."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
import plotly.graph_objects as go
from dash import Input, Output, callback, dcc, html
from plotly.subplots import make_subplots

from dashboards import queries
from dashboards.components import (
    empty_figure,
    fraction,
    integer,
    number,
    page_header,
    paged,
    percent,
    plot_text,
    server_table,
    single_values,
    url,
    when,
)
from dashboards.context import current

dash.register_page(__name__, path="/sources", name="Sources", order=3)

URL = "sources-url"
MODEL, SEARCH, MIN_RATE, TABLE = (
    "sources-model",
    "sources-search",
    "sources-min-rate",
    "sources-table",
)
PAGE_SIZE = 25
COLUMNS = [
    ("source", "source"),
    ("model", "model"),
    ("inputs", "inputs"),
    ("flagged_rate", "flagged rate"),
    ("low_confidence_rate", "low-confidence rate"),
    ("mean_confidence", "mean confidence"),
    ("max_divergence", "max divergence"),
    ("open_alerts", "open alerts"),
    ("last_seen", "last seen (UTC)"),
]


@single_values
def layout(
    model: str | None = None,
    q: str | None = None,
    min_rate: str | None = None,
    sort: str = "flagged_rate",
    order: str = "desc",
    page: str | None = None,
    source: str | None = None,
    **_query: str,
) -> html.Div:
    db = current().db
    minimum = fraction(min_rate)
    sort = sort if sort in queries.SOURCE_SORTS else "flagged_rate"
    rows, total, page_number = paged(
        lambda number: queries.source_page(
            db,
            model=model,
            search=q,
            min_flagged_rate=minimum,
            sort=sort,
            descending=order != "asc",
            page=number,
            size=PAGE_SIZE,
        ),
        integer(page),
        PAGE_SIZE,
    )
    for row in rows:
        row["id"] = row["source"]
        row["flagged_rate"], row["low_confidence_rate"] = (
            percent(row["flagged_rate"]),
            percent(row["low_confidence_rate"]),
        )
        row["mean_confidence"] = number(row["mean_confidence"])
        row["max_divergence"] = number(row["max_divergence"])
        row["last_seen"] = when(row["last_seen"])
    return html.Div(
        [
            dcc.Location(id=URL, refresh="callback-nav"),
            page_header(
                "Sources", f"{total:,} source/model pair(s) match; click a row for its activity."
            ),
            dbc.Row(
                [
                    dbc.Col(
                        [
                            html.Label("model", htmlFor=MODEL, className="form-label small"),
                            dcc.Dropdown(
                                id=MODEL,
                                options=queries.source_models(db),
                                value=model,
                                placeholder="any model",
                            ),
                        ],
                        md=3,
                    ),
                    dbc.Col(
                        [
                            html.Label(
                                "source contains", htmlFor=SEARCH, className="form-label small"
                            ),
                            dcc.Input(
                                id=SEARCH,
                                value=q or "",
                                debounce=True,
                                type="text",
                                className="form-control",
                                placeholder="10.66.",
                            ),
                        ],
                        md=3,
                    ),
                    dbc.Col(
                        [
                            html.Label(
                                "min flagged rate", htmlFor=MIN_RATE, className="form-label small"
                            ),
                            dcc.Input(
                                id=MIN_RATE,
                                value=min_rate or "",
                                debounce=True,
                                type="number",
                                min=0,
                                max=1,
                                step=0.01,
                                className="form-control",
                            ),
                        ],
                        md=2,
                    ),
                ],
                className="mb-2",
            ),
            server_table(TABLE, COLUMNS, rows, total, page_number, PAGE_SIZE, sort, order != "asc"),
            html.Div(
                _detail(source, model) if source else None, id="sources-detail", className="mt-4"
            ),
        ]
    )


@callback(
    Output(URL, "search"),
    Input(MODEL, "value"),
    Input(SEARCH, "value"),
    Input(MIN_RATE, "value"),
    Input(TABLE, "page_current"),
    Input(TABLE, "sort_by"),
    Input(TABLE, "active_cell"),
    prevent_initial_call=True,
)
def navigate(model, q, min_rate, page, sort_by, cell):
    """Filters, sort, page and the selected source live in the URL (deep links)."""
    restart = dash.ctx.triggered_id in (MODEL, SEARCH, MIN_RATE)
    sort = sort_by[0]["column_id"] if sort_by else "flagged_rate"
    order = sort_by[0]["direction"] if sort_by else "desc"
    source = (
        cell.get("row_id")
        if cell and not restart and dash.ctx.triggered_id == TABLE and cell.get("row_id")
        else None
    )
    return url(
        "",
        model=model,
        q=q,
        min_rate=min_rate,
        sort=sort,
        order=order,
        page=0 if restart else page,
        source=source,
    )


def _detail(source: str, model: str | None) -> html.Div:
    db = current().db
    series = queries.source_series(db, source)
    sample = queries.score_sample(db, source=source)
    thresholds = queries.thresholds(db, model)
    timeline = go.Figure()
    if series:
        timeline.add_bar(
            x=[p["bucket"] for p in series],
            y=[p["inputs"] for p in series],
            name="inputs",
            marker_color="#adb5bd",
        )
        timeline.add_bar(
            x=[p["bucket"] for p in series],
            y=[p["flagged"] for p in series],
            name="flagged",
            marker_color="#dc3545",
        )
        timeline.update_layout(
            barmode="overlay",
            height=260,
            title=plot_text(f"{source}: inputs per minute"),
            margin={"l": 40, "r": 10, "t": 40, "b": 30},
            legend={"orientation": "h"},
        )
    return html.Div(
        [
            dcc.Graph(
                id="sources-timeline",
                figure=timeline if series else empty_figure("no inputs"),
                config={"displayModeBar": False},
            ),
            dcc.Graph(
                id="sources-histograms",
                figure=histograms(sample, thresholds, source),
                config={"displayModeBar": False},
            ),
        ]
    )


def histograms(
    sample: dict[str, list[float]], thresholds: dict | None, source: str | None
) -> go.Figure:
    """Confidence and squeezing divergence with the calibrated thresholds drawn on them."""
    if not sample["confidence"]:
        return empty_figure("no scored inputs")
    figure = make_subplots(
        rows=1, cols=2, subplot_titles=("confidence (max softmax)", "squeezing divergence (L1)")
    )
    figure.add_histogram(
        x=sample["confidence"], nbinsx=40, row=1, col=1, name="confidence", marker_color="#0d6efd"
    )
    figure.add_histogram(
        x=sample["divergence"], nbinsx=40, row=1, col=2, name="divergence", marker_color="#6f42c1"
    )
    if thresholds:
        for col, key, label in ((1, "confidence", "low below"), (2, "squeeze", "flag above")):
            value = thresholds.get(key)
            if value is not None and value != float("inf"):
                figure.add_vline(
                    x=value,
                    line_dash="dash",
                    line_color="#dc3545",
                    row=1,
                    col=col,
                    annotation_text=f"{label} {value:.3f}",
                )
    scope = f"{source}'s" if source else "the"
    figure.update_layout(
        height=280,
        showlegend=False,
        margin={"l": 40, "r": 10, "t": 50, "b": 30},
        title=plot_text(f"Newest {len(sample['confidence']):,} of {scope} inputs"),
    )
    return figure
