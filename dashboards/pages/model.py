"""Model: robust accuracy against eps per attack with one curve per version, per-class robust
accuracy, credibility checks, the example gallery, gate decisions and the MLflow run."""

from __future__ import annotations

import dash
import dash_bootstrap_components as dbc
import plotly.graph_objects as go
from dash import Input, Output, callback, dash_table, dcc, html
from plotly.subplots import make_subplots

from dashboards import queries
from dashboards.components import (
    TABLE_STYLE,
    badge,
    empty_figure,
    number,
    page_header,
    plot_text,
    single_values,
    url,
    when,
)
from dashboards.context import current
from monitor.audit.config import eps_text
from monitor.audit.store import get_audit
from monitor.gate.record import history

dash.register_page(__name__, path_template="/models/<name>", name="Model", nav=False)

URL = "model-url"
VERSION = "model-version"
CONFIG = "model-config"
RESULTS = "model-results"


@single_values
def layout(
    name: str | None = None, version: str | None = None, config: str | None = None, **_query: str
) -> html.Div:
    context = current()
    audits = queries.newest_audits(context.db, name) if name else []
    if not audits:
        return html.Div(
            [
                page_header(name or "Model", "No succeeded audits of this model yet."),
                dcc.Location(id=URL, refresh="callback-nav"),
            ]
        )
    versions = sorted({a.version for a in audits}, key=_version_order)
    champion = context.aliases(name).get("champion")
    chosen = version if version in versions else champion if champion in versions else versions[-1]
    configs = [a for a in audits if a.version == chosen]  # newest first
    selected = next((a for a in configs if a.config_hash == config), configs[0])
    same_config = [a for a in audits if a.config_hash == selected.config_hash]
    detail = get_audit(context.db, selected.audit_id)
    return html.Div(
        [
            dcc.Location(id=URL, refresh="callback-nav"),
            page_header(
                f"Model {name}",
                f"{len(versions)} audited version(s); champion "
                f"{'v' + champion if champion else 'none'}. The curves show every version "
                "audited under the chosen configuration.",
            ),
            dcc.Graph(
                id="model-curves",
                figure=curves_figure(sorted(same_config, key=lambda a: _version_order(a.version))),
                config={"displayModeBar": False},
            ),
            _choosers(versions, chosen, configs, selected),
            html.P(
                [
                    f"audit {detail.id} · clean accuracy {number(detail.clean_accuracy)} · score "
                    f"{number(detail.score, 1)} · {when(detail.finished_at)} ",
                    _mlflow(selected.mlflow_run_id),
                ],
                className="text-muted small",
                id="model-audit",
            ),
            dbc.Row(
                [
                    dbc.Col([html.H3("Robust accuracy", className="h6"), _results(selected)], md=5),
                    dbc.Col(
                        dcc.Graph(
                            id="model-classes",
                            figure=class_figure(selected.audit_id),
                            config={"displayModeBar": False},
                        ),
                        md=7,
                    ),
                ]
            ),
            html.H3("Credibility checks", className="h6 mt-3"),
            _checks(detail),
            _lineage(name, chosen),
            html.H3("Examples", className="h6 mt-3"),
            _gallery(selected.audit_id),
            html.H3("Gate decisions", className="h6 mt-4"),
            _gates(name),
        ]
    )


@callback(
    Output(URL, "search"),
    Input(VERSION, "value"),
    Input(CONFIG, "value"),
    prevent_initial_call=True,
)
def choose(version: str, config: str) -> str:
    """A new version keeps the configuration (its newest audit is shown if it has none)."""
    return url("", version=version, config=config)


def _version_order(version: str) -> tuple[int, str]:
    """Numeric versions in numeric order, anything else first (never raises)."""
    return (int(version), "") if version.isdecimal() else (-1, version)


def _choosers(
    versions: list[str],
    chosen: str,
    configs: list[queries.ConfigAudit],
    selected: queries.ConfigAudit,
) -> dbc.Row:
    """The version and configuration dropdowns (configurations newest first)."""
    return dbc.Row(
        [
            dbc.Col(html.Label("Version", htmlFor=VERSION, className="form-label"), width="auto"),
            dbc.Col(
                dcc.Dropdown(
                    id=VERSION,
                    options=[{"label": f"v{v}", "value": v} for v in versions],
                    value=chosen,
                    clearable=False,
                ),
                width=2,
            ),
            dbc.Col(
                html.Label("Configuration", htmlFor=CONFIG, className="form-label"), width="auto"
            ),
            dbc.Col(
                dcc.Dropdown(
                    id=CONFIG,
                    options=[
                        {
                            "label": f"{a.label} (audit {a.audit_id}, {when(a.finished_at)})",
                            "value": a.config_hash,
                        }
                        for a in configs
                    ],
                    value=selected.config_hash,
                    clearable=False,
                    optionHeight=50,
                ),
            ),
        ],
        className="align-items-center mb-2 g-2",
    )


def _results(audit: queries.ConfigAudit) -> dash_table.DataTable:
    """The chosen audit's robust accuracy per attack, norm, eps and threat."""
    rows = sorted(audit.points, key=lambda p: (p["norm"], p["eps"], p["threat"], p["attack"]))
    return dash_table.DataTable(
        id=RESULTS,
        columns=[{"name": n, "id": n} for n in ("attack", "norm", "eps", "threat", "robust acc")],
        data=[
            {
                "attack": p["attack"].upper(),
                "norm": queries.NORM_NAMES.get(p["norm"], p["norm"]),
                "eps": eps_text(p["eps"]),
                "threat": p["threat"],
                "robust acc": number(p["robust_accuracy"]),
            }
            for p in rows
        ],
        **TABLE_STYLE,
    )


def curves_figure(curves: list[queries.ConfigAudit]) -> go.Figure:
    attacks = sorted({(p["attack"], p["norm"]) for c in curves for p in c.points})
    figure = make_subplots(
        rows=1,
        cols=max(1, len(attacks)),
        shared_yaxes=True,
        subplot_titles=[plot_text(f"{a.upper()} ({n})") for a, n in attacks],
    )
    palette = ["#0d6efd", "#d63384", "#198754", "#fd7e14", "#6f42c1", "#20c997"]
    for i, curve in enumerate(curves):
        color = palette[i % len(palette)]
        for col, (attack, norm) in enumerate(attacks, start=1):
            for threat in ("white-box", "transfer"):
                points = sorted(
                    (p["eps"], p["robust_accuracy"])
                    for p in curve.points
                    if (p["attack"], p["norm"], p["threat"]) == (attack, norm, threat)
                )
                if not points:
                    continue
                figure.add_scatter(
                    x=[0.0] + [p[0] for p in points],
                    y=[curve.clean_accuracy] + [p[1] for p in points],
                    row=1,
                    col=col,
                    mode="lines+markers",
                    name=plot_text(f"v{curve.version} {threat}"),
                    legendgroup=plot_text(f"v{curve.version}{threat}"),
                    showlegend=col == 1,
                    line={"color": color, "dash": "solid" if threat == "white-box" else "dash"},
                )
    figure.update_yaxes(range=[0, 1.02], title_text="robust accuracy", col=1)
    figure.update_xaxes(title_text="eps")
    figure.update_layout(
        height=330,
        margin={"l": 50, "r": 20, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.25},
        plot_bgcolor="white",
    )
    return figure


def class_figure(audit_id: int) -> go.Figure:
    matrix = queries.class_matrix(current().db, audit_id)
    if not matrix["labels"]:
        return empty_figure("no per-class results")
    figure = go.Figure(
        go.Heatmap(
            z=matrix["values"],
            x=[plot_text(column) for column in matrix["columns"]],
            y=[plot_text(label) for label in matrix["labels"]],
            zmin=0,
            zmax=1,
            colorscale="RdYlGn",
            colorbar={"title": "accuracy"},
            hovertemplate="class %{y}, %{x}: %{z:.2f}<extra></extra>",
        )
    )
    figure.update_layout(
        height=360,
        title="Per-class accuracy (worst attack per eps)",
        margin={"l": 40, "r": 10, "t": 40, "b": 40},
        xaxis={"title": "clean / norm eps"},
        yaxis={"title": "class"},
    )
    return figure


def _checks(detail) -> dash_table.DataTable:
    return dash_table.DataTable(
        id="model-checks",
        columns=[{"name": n, "id": n} for n in ("check", "status", "detail")],
        data=[{"check": c.name, "status": c.status, "detail": c.detail} for c in detail.checks],
        style_data_conditional=[
            *TABLE_STYLE["style_data_conditional"],
            {"if": {"filter_query": '{status} = "warning"'}, "backgroundColor": "#fff3cd"},
        ],
        **{k: v for k, v in TABLE_STYLE.items() if k != "style_data_conditional"},
    )


def _gallery(audit_id: int) -> html.Div:
    if "examples.png" not in queries.artifact_names(current().db, audit_id):
        return html.P("No adversarial examples (no attack succeeded).", className="text-muted")
    return html.Img(
        src=f"/artifacts/{audit_id}/examples.png",
        id="model-gallery",
        alt="clean, adversarial and amplified-perturbation examples",
        style={"maxWidth": "100%", "border": "1px solid #dee2e6"},
    )


def _gates(name: str) -> html.Div:
    rows = history(current().db, name, limit=20)
    if not rows:
        return html.P("No gate decisions yet (robmon gate).", className="text-muted")
    return dbc.Table(
        [
            html.Thead(
                html.Tr(
                    [
                        html.Th(h)
                        for h in ("when", "version", "verdict", "policy", "promoted", "by", "why")
                    ]
                )
            ),
            html.Tbody(
                [
                    html.Tr(
                        [
                            html.Td(when(r.decided_at)),
                            html.Td(f"v{r.model_version}"),
                            html.Td(badge(r.verdict)),
                            html.Td(r.policy_hash or ""),
                            html.Td(
                                f"{r.promoted_alias} (was {r.previous_version or 'unset'})"
                                if r.promoted_alias
                                else ""
                            ),
                            html.Td(r.decided_by),
                            html.Td(r.reason, className="small"),
                        ]
                    )
                    for r in rows
                ]
            ),
        ],
        size="sm",
        hover=True,
        id="model-gates",
    )


def _lineage(name: str, version: str) -> html.Div:
    """A hardened or defended version beside its parent: what it cost, what it gained."""
    from monitor.audit.compare import compare
    from monitor.errors import RobmonError
    from monitor.registry import PARENT_TAG, ModelVersionRef

    context = current()
    try:
        registry = context.registry()
        parent = registry.version_tags(ModelVersionRef(name, version)).get(PARENT_TAG)
        if not parent:
            return html.Div(id="model-lineage")
        c = compare(context.db, registry, f"models:/{parent}", f"models:/{name}/{version}")
    except RobmonError as err:
        return html.Div(html.P(f"Lineage unavailable: {err}", className="text-muted small"))
    trained = f", trained in {c.b.training_seconds:.1f} s" if c.b.training_seconds else ""
    rows = [("clean", "", c.a.audit.clean_accuracy, c.b.audit.clean_accuracy, c.clean_delta)]
    rows += [(f"{d.attack.upper()} {d.norm}", f"{d.eps:g}", d.a, d.b, d.delta) for d in c.cells]
    header = ("", "eps", f"parent v{c.a.ref.version}", f"v{version}", "change")
    return html.Div(
        [
            html.H3(f"Against its parent v{c.a.ref.version}", className="h6 mt-3"),
            html.P(f"{c.b.lineage}{trained}.", className="text-muted small mb-1"),
            dbc.Table(
                [
                    html.Thead(html.Tr([html.Th(h) for h in header])),
                    html.Tbody(
                        [
                            html.Tr(
                                [
                                    html.Td(what),
                                    html.Td(eps),
                                    html.Td(number(a)),
                                    html.Td(number(b)),
                                    html.Td(
                                        "" if delta is None else f"{delta:+.3f}",
                                        className="text-success"
                                        if (delta or 0) > 0
                                        else "text-danger"
                                        if (delta or 0) < 0
                                        else "",
                                    ),
                                ]
                            )
                            for what, eps, a, b, delta in rows
                        ]
                    ),
                ],
                size="sm",
                hover=True,
                className="w-auto",
            ),
        ],
        id="model-lineage",
    )


def _mlflow(run_id: str | None) -> html.Span:
    if not run_id:
        return html.Span("no MLflow run")
    link = current().mlflow_run_url(run_id)
    if link:
        return html.A("MLflow run", href=link, target="_blank", rel="noopener")
    return html.Span(f"MLflow run {run_id} (experiment robustness-audits)")
