"""What the dashboard sends and refuses beyond signing in, against a real app and database:
security headers on every response, Secure cookies over HTTPS, no public address without users,
and 400/404 with one log line (no traceback) for requests no page makes."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import socket
from dataclasses import replace
from urllib.parse import quote

import pytest

from dashboards.app import create_app
from dashboards.auth import refuse_anonymous_exposure, save_user
from monitor.errors import ConfigError
from tests.dashboards.test_auth import PASSWORD, Site, acknowledge, call, sign_in

PATHS = ["/", "/alerts?id=1", "/login", "/_dash-layout", "/vendor/bootstrap.min.css", "/nowhere"]


@pytest.fixture
def app(settings):
    return create_app(settings)


def _dashboard(settings, **table):
    return create_app(replace(settings, tables={"dashboard": table}))


@pytest.mark.parametrize("path", [*PATHS, "/_dash-component-suites/dash/nope.js"])
def test_every_response_carries_the_security_headers(app, path) -> None:
    response = app.server.test_client().get(path)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_the_policy_allows_exactly_the_inline_scripts_of_the_page(app) -> None:
    response = app.server.test_client().get("/")
    directives = dict(
        d.strip().split(" ", 1) for d in response.headers["Content-Security-Policy"].split(";")
    )
    scripts = directives["script-src"].split()
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    page = re.sub(r"<!--.*?-->", "", response.get_data(as_text=True), flags=re.S)
    inline = [
        body
        for attributes, body in re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S)
        if "src=" not in attributes and "application/json" not in attributes
    ]
    assert inline  # Dash's renderer starts from one
    for body in inline:
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in scripts


@pytest.mark.parametrize(
    ("table", "headers", "secure"),
    [
        ({}, {}, False),
        ({}, {"X-Forwarded-Proto": "https"}, False),  # not believed without trust_proxy
        ({"https": True}, {}, True),
        ({"trust_proxy": True}, {"X-Forwarded-Proto": "https"}, True),
        ({"trust_proxy": True}, {"X-Forwarded-Proto": "http"}, False),
    ],
)
def test_cookies_are_secure_over_https(settings, table, headers, secure) -> None:
    save_user(settings, "ana", PASSWORD, "triager")
    client = _dashboard(settings, **table).server.test_client()
    page = client.get("/login", headers=headers)
    signed = client.post(
        "/login",
        data={"user": "ana", "password": PASSWORD, "csrf": client.get_cookie("_csrf_token").value},
        headers=headers,
    )
    assert signed.status_code == 302
    cookies = page.headers.getlist("Set-Cookie") + signed.headers.getlist("Set-Cookie")
    assert {c.split("=")[0] for c in cookies} == {"_csrf_token", "session"}
    assert all(("; Secure" in c) == secure for c in cookies), cookies
    assert all("HttpOnly" in c for c in cookies if c.startswith("session="))


def test_trusted_proxy_addresses_are_the_clients_for_lockouts(settings) -> None:
    site = Site(settings, trust_proxy=True, signin_free_failures=1)
    client = site.client
    behind = {"X-Forwarded-For": "10.5.5.5"}
    client.get("/login")
    token = client.get_cookie("_csrf_token").value
    for n in range(4):  # per address: four times a user's free failures
        form = {"user": f"u{n}", "password": "guess", "csrf": token}
        assert client.post("/login", data=form, headers=behind).status_code == 200
    form = {"user": "ana", "password": PASSWORD, "csrf": token}
    assert client.post("/login", data=form, headers=behind).status_code == 429
    other = {"X-Forwarded-For": "10.5.5.6"}
    assert client.post("/login", data=form, headers=other).status_code == 302


# -- no public address without users --------------------------------------------------------------


@pytest.fixture
def busy_port():
    """A port already taken: a server that got past the refusal would fail there, not hang."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("command", ["dashboard", "serve"])
def test_a_public_address_without_users_is_refused(home, robmon, busy_port, command) -> None:
    result = robmon(command, "--host", "0.0.0.0", "--port", str(busy_port))
    assert result.code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: refusing to serve the dashboard on 0.0.0.0 with no users")
    assert "--allow-anonymous-view" in line


def test_who_may_serve_where(settings) -> None:
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        refuse_anonymous_exposure(settings, host, allow_anonymous_view=False)
    for host in ("0.0.0.0", "::", "192.168.1.5", "dashboard.example"):
        with pytest.raises(ConfigError, match="--allow-anonymous-view"):
            refuse_anonymous_exposure(settings, host, allow_anonymous_view=False)
        refuse_anonymous_exposure(settings, host, allow_anonymous_view=True)
    save_user(settings, "ana", PASSWORD, "triager")
    refuse_anonymous_exposure(settings, "0.0.0.0", allow_anonymous_view=False)


# -- bad requests ---------------------------------------------------------------------------------


def _logged(caplog) -> list[logging.LogRecord]:
    """What the request logged, failing on any traceback or error."""
    records = [r for r in caplog.records if r.name.startswith(("dashboards", "flask", "werkzeug"))]
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR], records
    return records


@pytest.mark.parametrize(
    "path",
    [
        "/_dash-component-suites/dash/nonexistent.js",
        "/_dash-component-suites/no_such_package/x.js",
        "/_dash-component-suites/dash/deps/..%2F..%2F__init__.py",
    ],
)
def test_an_unknown_component_file_is_404_in_one_line(app, caplog, path) -> None:
    caplog.set_level(logging.INFO)
    assert app.server.test_client().get(path).status_code == 404
    [record] = _logged(caplog)
    assert record.getMessage().startswith("404 /_dash-component-suites/")


@pytest.mark.parametrize(
    "body",
    [[1, 2], {}, {"output": "alerts-message.children", "inputs": "x"}, {"output": 3}],
    ids=["list", "empty", "inputs-text", "output-number"],
)
def test_a_malformed_callback_is_400_in_one_line(app, caplog, body) -> None:
    caplog.set_level(logging.INFO)
    response = app.server.test_client().post("/_dash-update-component", json=body)
    assert response.status_code == 400
    [record] = _logged(caplog)
    assert record.getMessage().startswith("400 callback")


def test_triage_of_an_id_that_is_not_a_number_changes_nothing(settings, caplog) -> None:
    site = Site(settings)
    sign_in(site.client, "ana")
    caplog.set_level(logging.INFO)
    for bad in ("1 OR 1=1", str(10**30), {"id": 1}, None, 1.5e300):
        response = acknowledge(site.client, bad)
        assert response.status_code in (200, 400), response.get_data(as_text=True)
        if response.status_code == 200:
            assert "not an alert id" in response.get_data(as_text=True)
    _logged(caplog)
    assert site.alert_status() == "open" and site.events_by("ana") == 0


def _in_other_digits(number: int, zero: str) -> str:
    """``number`` written in another script's decimal digits (Python's int() reads them)."""
    return "".join(chr(ord(zero) + int(d)) for d in str(number))


@pytest.mark.parametrize(
    "spelling",
    [
        lambda n: _in_other_digits(n, "\u0660"),  # ARABIC-INDIC DIGIT ZERO (pentest 17, F4)
        lambda n: _in_other_digits(n, "\uff10"),  # FULLWIDTH DIGIT ZERO
        lambda n: "".join("\u00b9\u00b2\u00b3"[int(d) - 1] for d in str(n)),  # superscripts
        lambda n: f" {n}",
        lambda n: f"+{n}",
        lambda n: f"0_{n}",
    ],
    ids=["arabic-indic", "fullwidth", "superscript", "space", "plus", "underscore"],
)
def test_alert_ids_are_ascii_digits_only(settings, caplog, spelling) -> None:
    """Only one spelling of an id opens or changes an alert: ``٣`` acknowledged alert 3."""
    site = Site(settings)
    assert site.alert_id < 4  # the superscript spelling has digits 1-3 only
    sign_in(site.client, "ana")
    caplog.set_level(logging.INFO)
    other = spelling(site.alert_id)
    response = acknowledge(site.client, other)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "is not an alert id" in response.get_data(as_text=True)
    assert site.alert_status() == "open" and site.events_by("ana") == 0
    page = call(
        site.client,
        "_pages_content.children",
        {"_pages_location.pathname": "/alerts", "_pages_location.search": f"?id={quote(other)}"},
        changed="_pages_location.pathname",
    )
    assert page.status_code == 200
    assert "is not an alert id" in page.get_data(as_text=True)
    _logged(caplog)
    assert acknowledge(site.client, str(site.alert_id)).status_code == 200  # ASCII digits do
    assert site.alert_status() == "acknowledged"


@pytest.mark.parametrize("page", ["9" * 40, "9" * 5000, "-1", "1e9", "x"])
def test_a_page_number_beyond_any_integer_is_not_a_server_error(settings, caplog, page) -> None:
    site = Site(settings)
    caplog.set_level(logging.INFO)
    for path in ("/sources", "/alerts", "/audits"):
        response = call(
            site.client,
            "_pages_content.children",
            {"_pages_location.pathname": path, "_pages_location.search": f"?page={page}"},
            changed="_pages_location.pathname",
        )
        assert response.status_code in (200, 400), (path, response.status_code)
    _logged(caplog)
