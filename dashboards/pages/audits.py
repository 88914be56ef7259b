"""Audits: a filterable, paginated table (model, status, trigger, time) and one audit's detail."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dash_table, dcc, html

from dashboards import queries
from dashboards.components import (
    TABLE_STYLE,
    badge,
    clicked_id,
    integer,
    number,
    page_header,
    paged,
    record_id,
    server_table,
    single_values,
    url,
    when,
)
from dashboards.context import current
from monitor.audit.config import eps_text
from monitor.audit.report import run_info_lines
from monitor.audit.store import get_audit
from monitor.errors import NotFound

dash.register_page(__name__, path="/audits", name="Audits", order=2)

URL = "audits-url"
MODEL, STATUS, TRIGGER, TABLE = "audits-model", "audits-status", "audits-trigger", "audits-table"
PAGE_SIZE = 20
COLUMNS = [
    ("id", "id"),
    ("model_name", "model"),
    ("model_version", "version"),
    ("dataset", "dataset"),
    ("status", "status"),
    ("trigger", "trigger"),
    ("created", "created (UTC)"),
    ("clean", "clean acc"),
    ("score", "score"),
]


@single_values
def layout(
    model: str | None = None,
    status: str | None = None,
    trigger: str | None = None,
    page: str | None = None,
    id: str | None = None,
    **_query: str,
) -> html.Div:
    db = current().db
    rows, total, page_number = paged(
        lambda number: queries.audit_page(
            db, model=model, status=status, trigger=trigger, page=number, size=PAGE_SIZE
        ),
        integer(page),
        PAGE_SIZE,
    )
    values = queries.audit_filter_values(db)
    for row in rows:
        row["created"], row["clean"] = when(row["created_at"]), number(row["clean_accuracy"])
        row["score"] = number(row["score"], 1)
        del row["created_at"], row["clean_accuracy"]
    return html.Div(
        [
            dcc.Location(id=URL, refresh="callback-nav"),
            page_header("Audits", f"{total} audit(s) match."),
            dbc.Row(
                [
                    _filter(MODEL, "model", values["model"], model),
                    _filter(STATUS, "status", values["status"], status),
                    _filter(TRIGGER, "trigger", values["trigger"], trigger),
                ],
                className="mb-2",
            ),
            server_table(TABLE, COLUMNS, rows, total, page_number, PAGE_SIZE),
            html.Div(_detail(id) if id else None, id="audits-detail", className="mt-4"),
        ]
    )


def _filter(component_id: str, label: str, options: list[str], value: str | None) -> dbc.Col:
    return dbc.Col(
        [
            html.Label(label, htmlFor=component_id, className="form-label small"),
            dcc.Dropdown(id=component_id, options=options, value=value, placeholder=f"any {label}"),
        ],
        md=3,
    )


@callback(
    Output(URL, "search"),
    Input(MODEL, "value"),
    Input(STATUS, "value"),
    Input(TRIGGER, "value"),
    Input(TABLE, "page_current"),
    Input(TABLE, "active_cell"),
    State(TABLE, "data"),
    prevent_initial_call=True,
)
def navigate(model, status, trigger, page, cell, data):
    """Every filter, the page and the selected audit live in the URL (deep links)."""
    filters_changed = dash.ctx.triggered_id in (MODEL, STATUS, TRIGGER)
    selected = None if filters_changed else clicked_id(cell, data)
    return url(
        "",
        model=model,
        status=status,
        trigger=trigger,
        page=0 if filters_changed else page,
        id=selected,
    )


def _detail(requested: str) -> html.Div:
    audit_id = record_id(requested)
    if audit_id is None:
        return dbc.Alert(f"{requested[:40]!r} is not an audit id.", color="warning")
    try:
        audit = get_audit(current().db, audit_id)
    except NotFound:
        return dbc.Alert(f"There is no audit {audit_id}.", color="warning")
    header = html.H3(
        [f"Audit {audit.id}: {audit.model_name} v{audit.model_version} ", badge(audit.status)],
        className="h5",
    )
    facts = html.P(
        f"{audit.dataset} · trigger {audit.trigger} · clean accuracy "
        f"{number(audit.clean_accuracy)} · score {number(audit.score, 1)} · "
        f"created {when(audit.created_at)} · finished {when(audit.finished_at)}",
        className="text-muted small",
    )
    parts = [header, facts]
    ran = run_info_lines(audit.run_info)
    if ran:
        parts.append(html.Ul([html.Li(line) for line in ran], className="small", id="audits-run"))
    if audit.error:
        parts.append(dbc.Alert(audit.error, color="danger"))
    if audit.results:
        parts.append(
            dash_table.DataTable(
                id="audits-results",
                columns=[
                    {"name": n, "id": n}
                    for n in (
                        "threat",
                        "attack",
                        "norm",
                        "eps",
                        "robust accuracy",
                        "success rate",
                        "seconds",
                    )
                ],
                data=[
                    {
                        "threat": r.threat,
                        "attack": r.attack,
                        "norm": r.norm,
                        "eps": eps_text(r.eps),
                        "robust accuracy": number(r.robust_accuracy),
                        "success rate": number(r.attack_success_rate),
                        "seconds": number(r.seconds, 2),
                    }
                    for r in audit.results
                ],
                **TABLE_STYLE,
            )
        )
    if "robust_accuracy.png" in audit.artifact_names:
        parts.append(
            html.Img(
                src=f"/artifacts/{audit.id}/robust_accuracy.png",
                style={"maxWidth": "520px"},
                className="mt-3",
            )
        )
    if audit.checks:
        parts.append(
            html.Ul(
                [html.Li([badge(c.status), html.B(c.name), f": {c.detail}"]) for c in audit.checks],
                className="mt-3 small",
            )
        )
    return html.Div(parts, id="audits-detail-body")
