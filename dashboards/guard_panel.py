"""The Guard section of the incident view: what the inline guard answered the incident's
addresses (counts by verdict, the newest refused and reviewed requests), the orders in force,
and a triager's order at the guard (refuse, allow, clear) for one of the addresses, recorded
with the signed-in triager and the note, like triage (dashboards.guard_queries does the work).

The alerts page owns the buttons' callback (Dash gives each app the callbacks of its pages):
after an order it reloads itself with ``guarded=<order id>`` in the URL, so that the page shows
the new state and the incident's trail as a reload would."""

from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import dcc, html

from dashboards import auth, guard_queries
from dashboards.components import badge, record_id, when
from dashboards.context import current
from dashboards.guard_queries import VERDICTS, AddressVerdicts, IncidentGuard
from monitor.errors import RobmonError
from monitor.guard.sources import Override

SOURCE, NOTE, MESSAGE = "alerts-guard-source", "alerts-guard-note", "alerts-guard-message"
COUNTS, ORDERS, LATEST = "alerts-guard-counts", "alerts-guard-orders", "alerts-guard-latest"
BUTTONS = {  # id -> (order, label, colour)
    "alerts-guard-refuse": ("refuse", "Refuse this source", "danger"),
    "alerts-guard-allow": ("allow", "Allow this source", "success"),
    "alerts-guard-clear": ("clear", "Clear order", "secondary"),
}
VERDICT_COLORS = {"allow": "success", "review": "warning", "refuse": "danger"}
DONE = {"refuse": "is now refused", "allow": "is now allowed", "clear": "has no order any more"}


def section(alert_id: int, guarded: str | None) -> html.Div:
    """The Guard section of incident ``alert_id``; ``guarded`` is the URL's order id (shown as
    done when it was given from this incident)."""
    db = current().db
    view = guard_queries.incident_guard(db, alert_id)
    order_id = record_id(guarded)
    done = guard_queries.recorded_order(db, alert_id, order_id) if order_id else None
    return html.Div(
        [
            html.H4("Guard", className="h6 mt-3"),
            html.P(
                "What the inline guard answered before the model did, for each address of this "
                "incident: in the incident's window (record time) and in all.",
                className="small text-muted mb-1",
            ),
            dbc.Alert(
                f"{done.source} {DONE[done.action]} at the guard.",
                color="success",
                id="alerts-guard-done",
            )
            if done
            else None,
            dbc.Row(
                [
                    dbc.Col([_counts(view), _orders(view)], lg=5),
                    dbc.Col(_latest(view), lg=7),
                ]
            ),
            _controls(view, done.source if done else view.source),
            html.Div(id=MESSAGE),
        ],
        id="alerts-guard",
    )


def _counts(view: IncidentGuard) -> dbc.Table:
    spans = html.Tr(
        [
            html.Th("address", rowSpan=2, className="align-bottom"),
            html.Th("in the window", colSpan=3, className="text-center border-start"),
            html.Th("in all", colSpan=3, className="text-center border-start"),
        ]
    )
    verdicts = html.Tr(
        [
            html.Th(v, className="text-end" + (" border-start" if v == VERDICTS[0] else ""))
            for _ in range(2)
            for v in VERDICTS
        ]
    )
    return dbc.Table(
        [html.Thead([spans, verdicts]), html.Tbody([_count_row(a) for a in view.addresses])],
        size="sm",
        id=COUNTS,
    )


def _count_row(address: AddressVerdicts) -> html.Tr:
    cells = [
        html.Td(
            f"{counts[v]:,}",
            className="text-end" + (" border-start" if v == VERDICTS[0] else ""),
        )
        for counts in (address.window, address.total)
        for v in VERDICTS
    ]
    return html.Tr([html.Td(address.source, className="text-break"), *cells])


def _orders(view: IncidentGuard) -> html.Div:
    orders = [a.order for a in view.addresses if a.order is not None]
    if not orders:
        return html.P(
            "No order in force: the guard decides from the detectors and open incidents.",
            className="small text-muted",
            id=ORDERS,
        )
    return html.Div([_order(o) for o in orders], id=ORDERS)


def _order(order: Override) -> html.P:
    return html.P(
        [
            badge(order.action, VERDICT_COLORS[order.action]),
            html.Strong(order.source),
            f" on {order.action} at the guard, set by {order.actor} on {when(order.at)} UTC",
            f": {order.note}" if order.note else "",
        ],
        className="small mb-1",
    )


def _latest(view: IncidentGuard) -> html.Div:
    if not view.latest:
        guarded = any(sum(a.total.values()) for a in view.addresses)
        return html.P(
            "No refused or reviewed requests."
            if guarded
            else "No request from these addresses has passed through an inline guard.",
            className="small text-muted",
            id=LATEST,
        )
    head = ("when (UTC)", "source", "model", "verdict", "reason")
    rows = [
        html.Tr(
            [
                html.Td(when(r.ts), className="text-nowrap"),
                html.Td(r.source, className="text-break"),
                html.Td(r.model),
                html.Td(badge(r.verdict, VERDICT_COLORS[r.verdict])),
                html.Td(r.reason or "", className="small"),
            ]
        )
        for r in view.latest
    ]
    return html.Div(
        [
            html.Div(f"Newest {len(rows)} refused or reviewed", className="small fw-semibold"),
            dbc.Table(
                [html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)],
                size="sm",
                id=LATEST,
            ),
        ]
    )


def _controls(view: IncidentGuard, picked: str) -> dbc.Row:
    addresses = [a.source for a in view.addresses]
    buttons = [
        dbc.Button(label, id=button_id, color=colour, className="me-2", size="sm")
        for button_id, (_, label, colour) in BUTTONS.items()
    ]
    return dbc.Row(
        [
            dbc.Col(
                [
                    html.Label(
                        "order at the guard for", htmlFor=SOURCE, className="form-label small"
                    ),
                    dcc.Dropdown(
                        id=SOURCE,
                        options=addresses,
                        value=picked,
                        clearable=False,
                        disabled=len(addresses) == 1,
                    ),
                ],
                md=3,
            ),
            dbc.Col(
                [
                    html.Label("note", htmlFor=NOTE, className="form-label small"),
                    dcc.Textarea(
                        id=NOTE,
                        placeholder="why, for the audit trail",
                        className="form-control",
                        style={"height": "38px"},
                    ),
                ],
                md=5,
            ),
            dbc.Col(html.Div(buttons), md=4, className="d-flex align-items-end"),
        ],
        className="my-2 g-2",
    )


def give_order(
    button_id: str, source: object, note: str | None, alert_id: object
) -> tuple[dbc.Alert | None, int | None]:
    """The order a button gives, like triage: only a signed-in triager may, recorded with the
    user's name and the note. (a refusal to show, None) or (None, the recorded order's id)."""
    allowed, why = auth.can_triage()
    if not allowed:
        return dbc.Alert(f"Refused: {why}.", color="danger", id="alerts-guard-refused"), None
    checked = record_id(alert_id)
    if checked is None:
        refusal = f"Refused: {str(alert_id)[:40]!r} is not an alert id."
        return dbc.Alert(refusal, color="danger"), None
    user = auth.current_user()
    try:
        given = guard_queries.order_from_incident(
            current().db, checked, str(source or ""), BUTTONS[button_id][0], user["name"], note
        )
    except RobmonError as err:
        return dbc.Alert(str(err), color="warning"), None
    return None, given.id
