"""Alerts: the triage queue (filters by status, severity, rule, model, source), an alert's
evidence, its sources' timeline, kept flagged inputs, what the inline guard answered its sources
and orders at the guard (dashboards.guard_panel), triage actions with a note (signed-in triagers
only), and the audit trail."""

from __future__ import annotations

from urllib.parse import parse_qsl

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html

from dashboards import auth, guard_panel, queries
from dashboards.components import (
    badge,
    clicked_id,
    integer,
    page_header,
    paged,
    record_id,
    server_table,
    single_values,
    url,
    when,
)
from dashboards.context import current
from dashboards.incident_evidence import (
    evidence_value,
    findings_table,
    kept_thumbnails,
    timeline_figure,
)
from monitor.alerts.lifecycle import TRANSITIONS, transition
from monitor.alerts.queries import get_alert
from monitor.errors import NotFound, RobmonError

dash.register_page(__name__, path="/alerts", name="Alerts", order=1)

URL = "alerts-url"
STATUS, SEVERITY, RULE, MODEL, SEARCH = (
    "alerts-status",
    "alerts-severity",
    "alerts-rule",
    "alerts-model",
    "alerts-source",
)
TABLE, NOTE, MESSAGE = "alerts-table", "alerts-note", "alerts-message"
ACTIONS = {
    "alerts-ack": "acknowledge",
    "alerts-resolve": "resolve",
    "alerts-false-positive": "false-positive",
}
PAGE_SIZE = 20
COLUMNS = [
    ("id", "id"),
    ("severity", "severity"),
    ("status", "status"),
    ("rules", "rules"),
    ("source", "source"),
    ("model", "model"),
    ("last_seen", "last seen (UTC)"),
    ("summary", "why"),
]
STATUSES = ["active", "open", "acknowledged", "resolved", "false_positive"]
DONE = {target for _, target in TRANSITIONS.values()}  # the ``done`` a triage leaves in the URL


@single_values
def layout(
    status: str = "active",
    severity: str | None = None,
    rule: str | None = None,
    model: str | None = None,
    q: str | None = None,
    page: str | None = None,
    id: str | None = None,
    done: str | None = None,
    guarded: str | None = None,
    **_query: str,
) -> html.Div:
    db = current().db
    rows, total, page_number = paged(
        lambda number: queries.alert_page(
            db,
            status=status or None,
            severity=severity,
            rule=rule,
            model=model,
            source=q,
            page=number,
            size=PAGE_SIZE,
        ),
        integer(page),
        PAGE_SIZE,
    )
    for row in rows:
        row["model"] = f"{row.pop('model_name')}/{row.pop('model_version')}"
        row["last_seen"] = when(row["last_seen"])
    values = queries.alert_filter_values(db)
    return html.Div(
        [
            dcc.Location(id=URL, refresh="callback-nav"),
            page_header("Alerts", f"{total} alert(s) match; most severe first."),
            dbc.Row(
                [
                    _dropdown(STATUS, "status", STATUSES, status),
                    _dropdown(SEVERITY, "severity", list(queries.SEVERITIES), severity),
                    _dropdown(RULE, "rule", values["rule"], rule),
                    _dropdown(MODEL, "model", values["model"], model),
                    dbc.Col(
                        [
                            html.Label(
                                "source contains", htmlFor=SEARCH, className="form-label small"
                            ),
                            dcc.Input(
                                id=SEARCH, value=q or "", debounce=True, className="form-control"
                            ),
                        ],
                        md=2,
                    ),
                ],
                className="mb-2",
            ),
            server_table(TABLE, COLUMNS, rows, total, page_number, PAGE_SIZE),
            html.Div(
                _detail(id, done, guarded) if id else None, id="alerts-detail", className="mt-4"
            ),
        ]
    )


def _dropdown(component_id: str, label: str, options: list[str], value: str | None) -> dbc.Col:
    return dbc.Col(
        [
            html.Label(label, htmlFor=component_id, className="form-label small"),
            dcc.Dropdown(id=component_id, options=options, value=value, placeholder=f"any {label}"),
        ],
        md=2,
    )


@callback(
    Output(URL, "search", allow_duplicate=True),
    Input(STATUS, "value"),
    Input(SEVERITY, "value"),
    Input(RULE, "value"),
    Input(MODEL, "value"),
    Input(SEARCH, "value"),
    Input(TABLE, "page_current"),
    Input(TABLE, "active_cell"),
    State(TABLE, "data"),
    prevent_initial_call=True,
)
def navigate(status, severity, rule, model, q, page, cell, data):
    """Filters, page and the selected alert live in the URL (deep links)."""
    restart = dash.ctx.triggered_id in (STATUS, SEVERITY, RULE, MODEL, SEARCH)
    selected = None if restart else clicked_id(cell, data)
    return url(
        "",
        status=status or "",
        severity=severity,
        rule=rule,
        model=model,
        q=q,
        page=0 if restart else page,
        id=selected,
    )


@callback(
    Output(MESSAGE, "children"),
    Output(URL, "search", allow_duplicate=True),
    Input("alerts-ack", "n_clicks"),
    Input("alerts-resolve", "n_clicks"),
    Input("alerts-false-positive", "n_clicks"),
    State(NOTE, "value"),
    State("alerts-selected", "data"),
    State(URL, "search"),
    prevent_initial_call=True,
)
def triage(_ack, _resolve, _false_positive, note, alert_id, search):
    """A write: only for a signed-in triager; recorded with who, when and the note."""
    if not dash.ctx.triggered or not dash.ctx.triggered[0]["value"]:
        raise dash.exceptions.PreventUpdate
    allowed, why = auth.can_triage()
    if not allowed:
        return dbc.Alert(f"Refused: {why}.", color="danger", id="alerts-refused"), dash.no_update
    action = ACTIONS[dash.ctx.triggered_id]
    checked = record_id(alert_id)
    if checked is None:
        return (
            dbc.Alert(f"Refused: {str(alert_id)[:40]!r} is not an alert id.", color="danger"),
            dash.no_update,
        )
    user = auth.current_user()
    try:
        transition(current().db, checked, action, user["name"], note or None)
    except RobmonError as err:
        return dbc.Alert(str(err), color="warning"), dash.no_update
    return None, _reload(search, "guarded", id=str(checked), done=TRANSITIONS[action][1])


@callback(
    Output(guard_panel.MESSAGE, "children"),
    Output(URL, "search", allow_duplicate=True),
    *(Input(button, "n_clicks") for button in guard_panel.BUTTONS),
    State(guard_panel.SOURCE, "value"),
    State(guard_panel.NOTE, "value"),
    State("alerts-selected", "data"),
    State(URL, "search"),
    prevent_initial_call=True,
)
def guard_order(_refuse, _allow, _clear, source, note, alert_id, search):
    """An order at the guard for one of the incident's addresses: a write, as triage is."""
    if not dash.ctx.triggered or not dash.ctx.triggered[0]["value"]:
        raise dash.exceptions.PreventUpdate
    refusal, order_id = guard_panel.give_order(dash.ctx.triggered_id, source, note, alert_id)
    if refusal is not None:
        return refusal, dash.no_update
    return None, _reload(search, "done", id=str(alert_id), guarded=str(order_id))


def _reload(search: str | None, drop: str, **params: str) -> str:
    """This page's URL after a write: its filters kept, ``drop`` left out, ``params`` set."""
    kept = {k: v for k, v in parse_qsl((search or "").lstrip("?")) if k != drop}
    return url("", **{**kept, **params})


def _detail(requested: str, done: str | None, guarded: str | None = None) -> html.Div:
    alert_id = record_id(requested)
    if alert_id is None:
        return dbc.Alert(f"{requested[:40]!r} is not an alert id.", color="warning")
    try:
        alert = get_alert(current().db, alert_id)
    except NotFound:
        return dbc.Alert(f"There is no alert {alert_id}.", color="warning")
    user = auth.current_user()
    evidence = {
        k: v for k, v in alert.evidence.items() if k not in ("suspicious_score_ids", "rules")
    }
    return html.Div(
        [
            dcc.Store(id="alerts-selected", data=alert.id),
            html.H3(
                [
                    f"Incident {alert.id} ",
                    badge(alert.severity),
                    badge(alert.status),
                    html.Small(f" {', '.join(alert.rules)}", className="text-muted"),
                ],
                className="h5",
            ),
            dbc.Alert(f"Now {done.replace('_', ' ')}.", color="success", id="alerts-done")
            if done in DONE
            else None,
            html.P(alert.summary, className="lead fs-6", id="alerts-summary"),
            html.P(
                f"window {when(alert.window_start)} to {when(alert.window_end)} UTC · first "
                f"seen {when(alert.first_seen)} · last seen {when(alert.last_seen)}",
                className="small text-muted",
            ),
            findings_table(alert.evidence.get("rules", {})),
            dbc.Row(
                [
                    dbc.Col(
                        dbc.Table(
                            [
                                html.Tbody(
                                    [
                                        html.Tr([html.Th(k), html.Td(evidence_value(v))])
                                        for k, v in evidence.items()
                                    ]
                                )
                            ],
                            size="sm",
                            id="alerts-evidence",
                        ),
                        md=5,
                    ),
                    dbc.Col(
                        dcc.Graph(figure=timeline_figure(alert), config={"displayModeBar": False}),
                        md=7,
                    ),
                ]
            ),
            kept_thumbnails(alert.evidence.get("suspicious_score_ids", [])),
            guard_panel.section(alert.id, guarded),
            html.H4("Triage", className="h6 mt-3"),
            html.P(
                f"Signed in as {user['name']} ({user['role']})."
                if user
                else [
                    "Viewing only: ",
                    html.A("sign in", href=f"/login?next=/alerts?id={alert.id}"),
                    " as a triager to change this alert.",
                ],
                className="small text-muted",
            ),
            dcc.Textarea(
                id=NOTE,
                placeholder="note for the audit trail",
                className="form-control",
                style={"height": "60px"},
            ),
            html.Div(
                [
                    dbc.Button(
                        "Acknowledge",
                        id="alerts-ack",
                        color="warning",
                        className="me-2",
                        disabled=alert.status != "open",
                    ),
                    dbc.Button(
                        "Resolve",
                        id="alerts-resolve",
                        color="success",
                        className="me-2",
                        disabled=alert.status not in ("open", "acknowledged"),
                    ),
                    dbc.Button(
                        "False positive",
                        id="alerts-false-positive",
                        color="secondary",
                        disabled=alert.status not in ("open", "acknowledged"),
                    ),
                ],
                className="my-2",
            ),
            html.Div(id=MESSAGE),
            html.H4("Audit trail", className="h6 mt-3"),
            dbc.Table(
                [
                    html.Thead(
                        html.Tr(
                            [html.Th(h) for h in ("when (UTC)", "who", "action", "status", "note")]
                        )
                    ),
                    html.Tbody(
                        [
                            html.Tr(
                                [
                                    html.Td(when(e.at)),
                                    html.Td(e.actor),
                                    html.Td(e.action),
                                    html.Td(f"{e.from_status or ''} → {e.to_status or ''}"),
                                    html.Td(e.note or "", className="small"),
                                ]
                            )
                            for e in alert.events
                        ]
                    ),
                ],
                size="sm",
                id="alerts-trail",
            ),
        ]
    )
