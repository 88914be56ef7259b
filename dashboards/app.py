"""The Dash app shell: pages from dashboards/pages, navigation, sign-in state, page container."""

from __future__ import annotations

from pathlib import Path

import dash
import dash_bootstrap_components as dbc
from dash import Dash, dcc, html

from dashboards import auth, routes
from dashboards.context import DashboardContext, install
from monitor.config import Settings
from monitor.db.session import Database, open_database


def create_app(settings: Settings, db: Database | None = None) -> Dash:
    """The dashboard for ``settings`` (its database is opened here, not at import)."""
    db = db or open_database(settings)
    install(DashboardContext(settings, db))
    app = Dash(
        "dashboards",  # the package: pages load as dashboards.pages.NAME, as imports name them
        use_pages=True,
        pages_folder=str(Path(__file__).parent / "pages"),
        external_stylesheets=["/vendor/bootstrap.min.css"],
        title="Robustness Monitor",
        suppress_callback_exceptions=True,
        serve_locally=True,
        update_title=None,
    )
    routes.install(app.server)
    auth.install(app.server, settings, db)
    app.layout = shell
    routes.install_security(app.server, app.csp_hashes)
    return app


def shell() -> html.Div:
    """Navigation bar (pages, sign-in state) over the page container; built per request."""
    user = auth.current_user()
    account = (
        html.Form(
            [
                html.Span(
                    f"{user['name']} ({user['role']})",
                    className="navbar-text text-light me-2 small",
                ),
                dcc.Input(type="hidden", name="csrf", value=_csrf(), id="nav-csrf"),
                html.Button(
                    "Sign out",
                    className="btn btn-sm btn-outline-light",
                    id="nav-sign-out",
                    type="submit",
                ),
            ],
            method="post",
            action="/logout",
            className="d-flex",
        )
        if user
        else html.A(
            "Sign in", href="/login", id="nav-sign-in", className="btn btn-sm btn-outline-light"
        )
    )
    links = [
        dbc.NavItem(dbc.NavLink(page["name"], href=page["relative_path"], active="exact"))
        for page in dash.page_registry.values()
        if page.get("nav", True)
    ]
    navbar = dbc.Navbar(
        dbc.Container(
            [
                dbc.NavbarBrand("Robustness Monitor", href="/"),
                dbc.Nav(links, className="me-auto"),
                account,
            ],
            fluid=True,
        ),
        color="dark",
        dark=True,
        className="mb-3",
    )
    return html.Div([navbar, dbc.Container(dash.page_container, fluid=True, className="pb-5")])


def _csrf() -> str:
    from flask import session

    return session.get("csrf", "")
