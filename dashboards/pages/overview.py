"""Overview: every watched model with its champion's robustness score and trend, its last
audit, open alerts by severity, and production volume and flagged rate (24 hours, 7 days)."""

from __future__ import annotations

from datetime import timedelta

import dash
import dash_bootstrap_components as dbc
import plotly.graph_objects as go
from dash import Input, Output, callback, dcc, html

from dashboards import queries
from dashboards.components import (
    SEVERITY_COLORS,
    badge,
    empty_figure,
    page_header,
    percent,
    plot_text,
    when,
)
from dashboards.context import current

dash.register_page(__name__, path="/", name="Overview", order=0)

CONTENT = "overview-content"
REFRESH = "overview-refresh"


def layout(**_query: str) -> html.Div:
    return html.Div(
        [
            page_header(
                "Overview",
                "Champion robustness, audits, open alerts and production traffic of every model.",
            ),
            dcc.Interval(id=REFRESH, interval=30_000),
            html.Div(overview_content(), id=CONTENT),
        ]
    )


@callback(Output(CONTENT, "children"), Input(REFRESH, "n_intervals"), prevent_initial_call=True)
def refresh(_ticks: int) -> html.Div:
    return overview_content()


def overview_content() -> html.Div:
    context = current()
    names = queries.model_names(context.db)
    champions = {name: context.aliases(name).get("champion") for name in names}
    rows = queries.overview(context.db, champions)
    if not rows:
        return dbc.Alert(
            "No audits or production inputs yet: run `robmon demo` or `robmon audit MODEL`.",
            color="info",
        )
    header = html.Thead(
        html.Tr(
            [
                html.Th(h)
                for h in (
                    "model",
                    "champion",
                    "robustness score",
                    "trend",
                    "last audit",
                    "open alerts",
                    "last 24 h (record time)",
                    "last 7 days",
                )
            ]
        )
    )
    body = html.Tbody([_row(r) for r in rows])
    end = queries.record_watermark(context.db)
    since = (end - timedelta(days=7)).replace(minute=0, second=0, microsecond=0)
    volume = go.Figure()
    for r in rows:
        series = queries.hourly_volume(context.db, r.name, since)
        if series:
            volume.add_bar(
                x=[p["bucket"] for p in series],
                y=[p["inputs"] for p in series],
                name=plot_text(f"{r.name} inputs"),
                width=3_600_000,
                offset=0,
            )
            volume.add_scatter(
                x=[p["bucket"] for p in series],
                y=[p["flagged"] / p["inputs"] if p["inputs"] else None for p in series],
                name=plot_text(f"{r.name} flagged rate"),
                yaxis="y2",
                mode="lines+markers",
            )
    volume.update_layout(
        height=300,
        margin={"l": 40, "r": 40, "t": 30, "b": 30},
        title=f"Production inputs per hour (7 days of record time to {end:%Y-%m-%d %H:%M} UTC)",
        barmode="stack",
        yaxis={"title": "inputs"},
        xaxis={"range": [since, end], "type": "date"},
        legend={"orientation": "h"},
        yaxis2={
            "title": "flagged rate",
            "overlaying": "y",
            "side": "right",
            "tickformat": ".0%",
            "rangemode": "tozero",
        },
    )
    return html.Div(
        [
            dbc.Table(
                [header, body],
                hover=True,
                responsive=True,
                className="align-middle",
                id="overview-table",
            ),
            dcc.Graph(
                figure=volume if volume.data else empty_figure("no production inputs"),
                config={"displayModeBar": False},
            ),
        ]
    )


def _row(r: queries.ModelOverview) -> html.Tr:
    trend = go.Figure(
        go.Scatter(
            x=[t[0] for t in r.trend],
            y=[t[1] for t in r.trend],
            mode="lines+markers",
            text=[plot_text(f"v{t[2]}") for t in r.trend],
            hovertemplate="%{text}: %{y:.1f}<extra></extra>",
        )
    )
    trend.update_layout(
        height=60,
        width=180,
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        xaxis={"visible": False},
        yaxis={"visible": False},
        plot_bgcolor="white",
    )
    alerts = [
        badge(f"{n} {sev}", SEVERITY_COLORS.get(sev))
        for sev, n in sorted(
            r.open_alerts.items(),
            key=lambda kv: queries.SEVERITIES.index(kv[0]) if kv[0] in queries.SEVERITIES else 9,
        )
    ] or [html.Span("none", className="text-muted")]
    return html.Tr(
        [
            html.Td(dcc.Link(r.name, href=f"/models/{r.name}", className="fw-semibold")),
            html.Td(f"v{r.champion}" if r.champion else html.Span("none", className="text-muted")),
            html.Td(
                [
                    html.Span("—" if r.score is None else f"{r.score:.1f}", className="fs-5"),
                    html.Div(f"{r.score_preset} preset", className="small text-muted")
                    if r.score_preset
                    else None,
                ]
            ),
            html.Td(
                dcc.Graph(figure=trend, config={"displayModeBar": False, "staticPlot": True})
                if len(r.trend) > 1
                else "—"
            ),
            html.Td(
                [
                    badge(r.last_audit_status) if r.last_audit_status else "—",
                    html.Div(when(r.last_audit_at), className="small text-muted"),
                ]
            ),
            html.Td(alerts),
            html.Td(
                [
                    html.Div(f"{r.volume_24h:,} inputs"),
                    html.Div(
                        f"{percent(r.flagged_rate_24h)} flagged", className="small text-muted"
                    ),
                ]
            ),
            html.Td(
                [
                    html.Div(f"{r.volume_7d:,} inputs"),
                    html.Div(f"{percent(r.flagged_rate_7d)} flagged", className="small text-muted"),
                ]
            ),
        ]
    )
