"""Signing in and out of the dashboard against a real app and a real SQLite database: sessions
that end (sign-out, password or role change, removal, idle and absolute limits), redirects that
stay on the site, and sign-in throttling (lockouts, one hash per attempt, a bounded queue)."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import replace
from datetime import timedelta
from urllib.parse import quote

import pytest
import requests
from sqlalchemy import select, update

from dashboards.app import create_app
from dashboards.auth import safe_next, save_user
from dashboards.signin import Backoff
from monitor.alerts.lifecycle import apply_findings
from monitor.alerts.rules import Finding
from monitor.alerts.settings import AlertSettings
from monitor.db.models import Alert, AlertEvent, DashboardSession
from monitor.db.session import open_database
from monitor.db.types import utcnow

PASSWORD = "triager-secret"


@pytest.fixture
def site(settings):
    """A dashboard with one open alert and a triager (ana); [dashboard] settings per test via
    ``site.configure(...)`` before the first request."""
    return Site(settings)


class Site:
    def __init__(self, settings, **dashboard) -> None:
        self.settings = replace(settings, tables={**settings.tables, "dashboard": dashboard})
        self.db = open_database(self.settings)
        save_user(self.settings, "ana", PASSWORD, "triager")
        now = utcnow()
        finding = Finding(
            "flagged-rate", "10.9.9.9", "m", "1", "high", "odd", now - timedelta(minutes=5), now, {}
        )
        with self.db.session() as s:
            [self.alert_id] = apply_findings(s, [finding], AlertSettings()).opened
        self.app = create_app(self.settings, self.db)
        self.client = self.app.server.test_client()

    def alert_status(self) -> str:
        with self.db.session() as s:
            return s.get(Alert, self.alert_id).status

    def events_by(self, actor: str) -> int:
        with self.db.session() as s:
            query = select(AlertEvent).where(AlertEvent.actor == actor)
            return len(s.scalars(query).all())


def csrf(client) -> str:
    if client.get_cookie("_csrf_token") is None:
        client.get("/login")
    return client.get_cookie("_csrf_token").value


def sign_in(client, user: str, password: str = PASSWORD, next_url: str = "/", **environ):
    token = csrf(client)
    form = {"user": user, "password": password, "csrf": token, "next": next_url}
    return client.post("/login", data=form, environ_base=environ)


def call(client, output: str, inputs: dict, state: dict | None = None, changed: str = ""):
    """One Dash callback request as the renderer sends it (the callback found by an output)."""
    deps = client.get("/_dash-dependencies").get_json()
    [dep] = [d for d in deps if output in d["output"]]
    outputs = [
        dict(zip(("id", "property"), part.split(".", 1), strict=True))
        for part in dep["output"].strip(".").split("...")
    ]
    payload = {
        "output": dep["output"],
        "outputs": outputs if dep["output"].startswith("..") else outputs[0],
        "inputs": [
            {"id": k.split(".")[0], "property": k.split(".")[1], "value": v}
            for k, v in inputs.items()
        ],
        "state": [
            {"id": k.split(".")[0], "property": k.split(".")[1], "value": v}
            for k, v in (state or {}).items()
        ],
        "changedPropIds": [changed] if changed else [],
    }
    return client.post(
        "/_dash-update-component", json=payload, headers={"X-CSRFToken": csrf(client)}
    )


def acknowledge(client, alert_id, note: str = "seen"):
    return call(
        client,
        "alerts-message.children",
        {
            "alerts-ack.n_clicks": 1,
            "alerts-resolve.n_clicks": None,
            "alerts-false-positive.n_clicks": None,
        },
        {"alerts-note.value": note, "alerts-selected.data": alert_id, "alerts-url.search": ""},
        changed="alerts-ack.n_clicks",
    )


# -- sessions -------------------------------------------------------------------------------------


def test_a_triager_signs_in_and_acknowledges(site) -> None:
    assert sign_in(site.client, "ana").status_code == 302
    response = acknowledge(site.client, site.alert_id)
    assert response.status_code == 200
    assert site.alert_status() == "acknowledged" and site.events_by("ana") == 1


def test_a_cookie_replayed_after_sign_out_changes_nothing(site) -> None:
    sign_in(site.client, "ana")
    stolen = site.client.get_cookie("session").value
    token = csrf(site.client)
    assert site.client.post("/logout", data={"csrf": token}).status_code == 302

    site.client.set_cookie("session", stolen)
    site.client.set_cookie("_csrf_token", token)
    response = acknowledge(site.client, site.alert_id)
    assert response.status_code in (200, 403)
    assert "acknowledged" not in response.get_data(as_text=True)
    assert site.alert_status() == "open" and site.events_by("ana") == 0
    with site.db.session() as s:
        [row] = s.scalars(select(DashboardSession)).all()
        assert row.revoked_reason == "signed out"


def test_a_demoted_then_removed_user_cannot_triage(site) -> None:
    sign_in(site.client, "ana")
    save_user(site.settings, "ana", "a-new-password", "viewer")  # demoted, new password
    assert "Refused" in acknowledge(site.client, site.alert_id).get_data(as_text=True)
    assert site.alert_status() == "open"

    sign_in(site.client, "ana", "a-new-password")  # signed in again, as a viewer now
    save_user(site.settings, "ana", "a-new-password", "triager")
    save_user(site.settings, "bob", PASSWORD, "triager")
    other = site.app.server.test_client()
    assert sign_in(other, "bob").status_code == 302
    (site.settings.home / "dashboard-users.toml").unlink()  # everyone removed
    for client in (site.client, other):
        assert "Refused" in acknowledge(client, site.alert_id).get_data(as_text=True)
    assert site.alert_status() == "open" and site.events_by("bob") == 0
    with site.db.session() as s:
        ended = sorted((r.user_name, r.revoked_reason) for r in s.scalars(select(DashboardSession)))
    assert ended == [
        ("ana", "password or role changed"),
        ("ana", "user removed"),
        ("bob", "user removed"),
    ]


def test_a_password_change_ends_the_session_and_the_new_password_works(site) -> None:
    sign_in(site.client, "ana")
    save_user(site.settings, "ana", "a-new-password", "triager")
    assert "sign in as a triager" in acknowledge(site.client, site.alert_id).get_data(as_text=True)
    assert sign_in(site.client, "ana").status_code == 200  # the old password no longer works
    assert sign_in(site.client, "ana", "a-new-password").status_code == 302
    assert acknowledge(site.client, site.alert_id).status_code == 200
    assert site.alert_status() == "acknowledged"


@pytest.mark.parametrize(
    "column", ["last_seen", "created_at"], ids=["idle-limit", "absolute-limit"]
)
def test_sessions_expire(site, column) -> None:
    sign_in(site.client, "ana")
    with site.db.session() as s:
        s.execute(update(DashboardSession).values({column: utcnow() - timedelta(hours=13)}))
    assert "sign in as a triager" in acknowledge(site.client, site.alert_id).get_data(as_text=True)
    assert site.alert_status() == "open"


def test_the_cookie_carries_a_token_whose_hash_alone_is_stored(site) -> None:
    from flask.sessions import SecureCookieSessionInterface

    sign_in(site.client, "ana")
    serializer = SecureCookieSessionInterface().get_signing_serializer(site.app.server)
    content = serializer.loads(site.client.get_cookie("session").value)
    assert set(content) == {"sid", "csrf"}  # no name, no role
    with site.db.session() as s:
        [row] = s.scalars(select(DashboardSession)).all()
    assert row.id_hash == hashlib.sha256(content["sid"].encode()).hexdigest()
    assert row.user_name == "ana" and row.revoked_at is None
    assert row.expires_at - row.created_at == timedelta(hours=12)


def test_session_limits_come_from_the_dashboard_table(settings) -> None:
    site = Site(settings, session_idle="10m", session_lifetime="2h")
    sign_in(site.client, "ana")
    with site.db.session() as s:
        [row] = s.scalars(select(DashboardSession)).all()
        assert row.expires_at - row.created_at == timedelta(hours=2)
        row.last_seen = utcnow() - timedelta(minutes=11)
    assert "sign in as a triager" in acknowledge(site.client, site.alert_id).get_data(as_text=True)


# -- redirects after sign-in ----------------------------------------------------------------------

OFF_SITE = [
    "/\t/evil.example/phish",
    "/\n/evil.example",
    "/\r\n/evil.example",
    "\t//evil.example",
    " /evil.example",
    "//evil.example",
    "///evil.example",
    "/\\evil.example",
    "\\\\evil.example",
    "/\\/evil.example",
    "https://evil.example/",
    "http:evil.example",
    "javascript:alert(1)",
    "evil.example",
    "/%2F%2Fevil.example",
    "/%2f/evil.example",
    "/%5Cevil.example",
    "/%09/evil.example",
    "/\x00/evil.example",
    "/\u3000/evil.example",
    "/\u2028/evil.example",
    "",
]
ON_SITE = ["/", "/alerts?id=3", "/sources?q=10.66.&page=2", "/models/digits-cnn?version=2"]


@pytest.mark.parametrize("target", OFF_SITE)
def test_next_off_the_site_falls_back_to_the_start_page(site, target) -> None:
    assert safe_next(target) == "/"
    response = sign_in(site.client, "ana", next_url=target)
    assert response.status_code == 302 and response.headers["Location"] == "/"
    page = site.client.get("/login?next=" + quote(target, safe="")).get_data(as_text=True)
    assert 'class="btn btn-link" href="/">Back' in page


@pytest.mark.parametrize("target", ON_SITE)
def test_next_on_the_site_is_kept(site, target) -> None:
    assert safe_next(target) == target
    response = sign_in(site.client, "ana", next_url=target)
    assert response.headers["Location"] == target


# -- sign-in throttling ---------------------------------------------------------------------------


def test_five_wrong_passwords_lock_out_even_the_right_one(site) -> None:
    for _ in range(5):
        wrong = sign_in(site.client, "ana", "guess")
        assert wrong.status_code == 200 and "wrong password" in wrong.get_data(as_text=True)
    locked = sign_in(site.client, "ana")  # the right password
    assert locked.status_code == 429
    wait = int(locked.headers["Retry-After"])
    assert 1 <= wait <= 5  # the first lockout is 5 s
    assert f"Too many attempts, try again in {wait} s." in locked.get_data(as_text=True)
    assert acknowledge(site.client, site.alert_id).status_code == 200
    assert site.alert_status() == "open"


def test_unknown_users_cost_one_hash_and_are_locked_out_alike(site) -> None:
    checks = site.app.server.extensions["robmon.auth"].signin.checks
    before = checks.count
    assert sign_in(site.client, "nobody", "guess").status_code == 200
    assert checks.count == before + 1
    assert sign_in(site.client, "ana", "guess").status_code == 200
    assert checks.count == before + 2
    for _ in range(4):
        sign_in(site.client, "nobody", "guess")
    assert sign_in(site.client, "nobody", "guess").status_code == 429
    assert checks.count == before + 6  # a locked-out attempt costs no hash


def test_one_address_guessing_many_users_is_locked_out(site) -> None:
    elsewhere = {"REMOTE_ADDR": "10.7.7.7"}
    for n in range(20):
        assert sign_in(site.client, f"user{n}", "guess", **elsewhere).status_code == 200
    assert sign_in(site.client, "ana", **elsewhere).status_code == 429
    assert sign_in(site.client, "ana").status_code == 302  # another address is not locked


def test_lockouts_double_up_to_the_cap_and_are_forgotten() -> None:
    now = [0.0]
    backoff = Backoff(free=5, base=1.0, cap=300.0, forget_after=900.0, clock=lambda: now[0])
    for _ in range(5):
        assert backoff.wait("k") == 0
        backoff.failed("k")
    waits = []
    for _ in range(12):
        waits.append(backoff.wait("k"))
        backoff.failed("k")
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    now[0] += 299
    assert backoff.wait("k") == pytest.approx(1)
    now[0] += 901
    assert backoff.wait("k") == 0  # forgotten after a quiet quarter of an hour
    backoff.failed("k")
    assert backoff.wait("k") == 0
    backoff.succeeded("k")
    assert backoff.wait("k") == 0


def test_sign_ins_beyond_the_queue_get_503_while_pages_are_served(settings) -> None:
    """A real server (waitress, 8 threads): while a password check is running, 4 sign-ins wait
    and 12 more are refused at once; /healthz and pages answer meanwhile."""
    from waitress.server import create_server

    site = Site(settings, signin_concurrent_checks=1, signin_queue=4)
    server = create_server(site.app.server, host="127.0.0.1", port=0, threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{server.effective_port}"
    try:
        assert requests.get(f"{base}/healthz", timeout=60).status_code == 200  # MLflow warm
        checks = site.app.server.extensions["robmon.auth"].signin.checks
        results: list[int] = []
        done = threading.Condition()

        def attempt() -> None:
            session = requests.Session()
            session.get(f"{base}/login", timeout=30)
            form = {"user": "ana", "password": "guess", "csrf": session.cookies["_csrf_token"]}
            status = session.post(f"{base}/login", data=form, timeout=60).status_code
            with done:
                results.append(status)
                done.notify_all()

        with checks.slot():  # a check in progress: nothing passes the queue
            threads = [threading.Thread(target=attempt) for _ in range(16)]
            for thread in threads:
                thread.start()
            with done:
                assert done.wait_for(lambda: len(results) == 12, timeout=60), results
            assert results == [503] * 12
            assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
            assert requests.get(f"{base}/login", timeout=10).status_code == 200
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results) == [200] * 4 + [503] * 12
    finally:
        server.close()


# -- the users command line -----------------------------------------------------------------------


def test_users_remove_takes_a_user_out_of_the_file(home, robmon) -> None:
    assert robmon("users", "add", "ana", "--password", PASSWORD).code == 0
    assert robmon("users", "remove", "ana").code == 0
    assert robmon("users", "list", "--json").json() == []
    missing = robmon("users", "remove", "ana")
    assert missing.code == 1 and "is not a user" in missing.stderr
