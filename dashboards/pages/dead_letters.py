"""Dead letters: production records the ingester could not score (malformed JSON, unknown
models, bad pixels, paths outside the input root, ...), newest first with their source, reason
and the start of the line, and how often each reason occurs. Every value is shown as text: an
excerpt is whatever a client sent."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html

from dashboards import queries
from dashboards.components import (
    integer,
    page_header,
    paged,
    server_table,
    single_values,
    url,
    when,
)
from dashboards.context import current
from monitor.config import mask_secrets

dash.register_page(__name__, path="/dead-letters", name="Dead letters", order=5)

URL, TABLE, REASON = "dead-letters-url", "dead-letters-table", "dead-letters-reason"
PAGE_SIZE = 25
EXCERPT_CHARS = 160
COLUMNS = [
    ("received", "received (UTC)"),
    ("source", "source"),
    ("model", "model"),
    ("reason", "reason"),
    ("excerpt", "excerpt"),
    ("origin", "where"),
]


@single_values
def layout(page: str | None = None, reason: str | None = None, **_query: str) -> html.Div:
    db = current().db
    rows, total, page_number = paged(
        lambda number: queries.dead_letter_page(db, kind=reason, page=number, size=PAGE_SIZE),
        integer(page),
        PAGE_SIZE,
    )
    return html.Div(
        [
            dcc.Location(id=URL, refresh="callback-nav"),
            dcc.Store(id=REASON, data=reason),
            page_header(
                "Dead letters",
                f"{total:,} production record(s) that could not be scored"
                + (" among the newest of this kind of reason" if reason else "")
                + "; newest first.",
            ),
            _reasons(reason),
            server_table(TABLE, COLUMNS, [_row(r) for r in rows], total, page_number, PAGE_SIZE),
        ]
    )


@callback(
    Output(URL, "search"),
    Input(TABLE, "page_current"),
    State(REASON, "data"),
    prevent_initial_call=True,
)
def navigate(page, reason):
    """The page and the reason filter live in the URL (deep links)."""
    return url("", reason=reason, page=page)


def _row(r: dict) -> dict:
    excerpt = r["excerpt"] or ""
    where = r["origin"] + (f":{r['line_number']}" if r["line_number"] is not None else "")
    return {
        "id": r["id"],
        "received": when(r["received_at"]),
        "source": r["source"] or "—",
        "model": r["model_name"] or "—",
        "reason": mask_secrets(r["reason"]),  # a reason may quote a URL with its password
        "excerpt": excerpt[:EXCERPT_CHARS] + ("…" if len(excerpt) > EXCERPT_CHARS else ""),
        "origin": where,
    }


def _reasons(selected: str | None) -> html.Div:
    counts = queries.dead_letter_reasons(current().db)
    if not counts:
        return dbc.Alert("No dead letters: every record ingested so far was scored.", color="info")
    rows = [
        html.Tr(
            [
                html.Td(f"{c['count']:,}", className="text-end"),
                html.Td(_reason_filter(c["reason"], selected)),
                html.Td(mask_secrets(c["example"]), className="small text-muted"),
            ],
            className="table-active" if c["reason"] == selected else None,
        )
        for c in counts
    ]
    return html.Div(
        [
            html.H3(
                f"By kind of reason (newest {queries.REASON_WINDOW:,} dead letters; quoted values"
                " and numbers left out, as robmon dead-letters list counts)",
                className="h6",
            ),
            dbc.Table(
                [
                    html.Thead(
                        html.Tr([html.Th("count"), html.Th("reason"), html.Th("newest example")])
                    ),
                    html.Tbody(rows),
                ],
                size="sm",
                className="w-auto",
                id="dead-letters-reasons",
            ),
            dcc.Link("all reasons", href="/dead-letters", className="small") if selected else None,
        ],
        className="mb-3",
    )


def _reason_filter(reason: str, selected: str | None) -> str | dcc.Link:
    """A kind of reason that links to its rows; one quoting a password is shown masked and
    unlinked (the link would carry it)."""
    shown = mask_secrets(reason)
    if reason == selected or shown != reason:
        return shown
    return dcc.Link(reason, href=url("/dead-letters", reason=reason))
