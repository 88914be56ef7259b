"""Who may do what on the dashboard: viewing is open (the server binds to 127.0.0.1 unless told
otherwise, and refuses a wider address while nobody can sign in); every write (alert triage)
needs a signed-in user whose role is ``triager`` now, in the users file, not at sign-in.

Users come from the configuration (dashboards.users; re-exported here, where the CLI and the
demo look for them), the users file re-read when it changes. Sessions live in the database
(dashboards.sessions): the signed cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) carries
only a random token, and a session ends on sign-out, at its idle or absolute limit, or as soon
as its user is removed or the user's password or role changes. Sign-in is throttled
(dashboards.signin). CSRF: a per-session token is set as the ``_csrf_token`` cookie, which
Dash's renderer echoes as the ``X-CSRFToken`` header on every callback; a signed-in session's
callbacks without the matching header are refused, and the sign-in form carries the token too.
"""

from __future__ import annotations

import hmac
import html
import ipaddress
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from flask import Flask, abort, current_app, g, has_request_context, redirect, request, session
from flask.sessions import SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from dashboards.sessions import (
    SessionLimits,
    resolve_session,
    revoke_session,
    start_session,
    user_stamp,
)
from dashboards.signin import Backoff, PasswordChecks, SignIn, SignInBusy, TooManyAttempts
from dashboards.users import (  # noqa: F401  (re-exported: the CLI and the demo import them here)
    ROLES,
    USERS_FILE,
    User,
    UserDirectory,
    load_users,
    remove_user,
    save_user,
    users_file,
)
from monitor.config import Settings
from monitor.db.session import Database
from monitor.errors import ConfigError, RobmonError
from monitor.times import parse_duration

log = logging.getLogger(__name__)

CSRF_COOKIE = "_csrf_token"
SESSION_TOKEN = "sid"  # the key of the session token in the signed cookie
EXTENSION = "robmon.auth"


@dataclass(frozen=True)
class DashboardSettings:
    """The ``[dashboard]`` table of robmon.toml (besides ``users`` and ``secret_key``)."""

    https: bool = False  # cookies are Secure (served over HTTPS, e.g. behind a TLS proxy)
    trust_proxy: bool = False  # X-Forwarded-For / -Proto of one proxy in front are believed
    session_idle: timedelta = timedelta(hours=1)
    session_lifetime: timedelta = timedelta(hours=12)
    signin_free_failures: int = 5  # wrong passwords in a row before a user is locked out
    signin_max_lockout: timedelta = timedelta(minutes=5)
    signin_concurrent_checks: int = 1  # password hashes checked at once
    signin_queue: int = 4  # sign-ins waiting for a check; more are refused with 503

    @staticmethod
    def from_settings(settings: Settings) -> DashboardSettings:
        table = dict(settings.section("dashboard"))
        for key in ("users", "secret_key"):
            table.pop(key, None)
        known = set(DashboardSettings.__dataclass_fields__)
        for key in sorted(set(table) - known):
            log.warning("robmon.toml: dashboard.%s is not a dashboard setting (ignored)", key)
            table.pop(key)
        for key in ("session_idle", "session_lifetime", "signin_max_lockout"):
            if key in table:
                table[key] = _duration(table[key], key)
        for key in ("https", "trust_proxy"):
            if not isinstance(table.get(key, False), bool):
                raise ConfigError(f"robmon.toml: dashboard.{key} must be true or false.")
        result = DashboardSettings(**table)
        counts = ("signin_free_failures", "signin_concurrent_checks", "signin_queue")
        for key in counts:
            value = getattr(result, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"robmon.toml: dashboard.{key} must be a whole number >= 1.")
        return result

    @property
    def limits(self) -> SessionLimits:
        return SessionLimits(self.session_idle, self.session_lifetime)


def _duration(value: Any, key: str) -> timedelta:
    try:
        duration = parse_duration(str(value))
    except RobmonError:
        raise ConfigError(f"robmon.toml: dashboard.{key} must be a duration such as 30m.") from None
    if duration <= timedelta(0):
        raise ConfigError(f"robmon.toml: dashboard.{key} must be longer than 0.")
    return duration


@dataclass
class AuthState:
    """What the request handlers of one app share (kept in ``server.extensions``)."""

    settings: DashboardSettings
    db: Database
    directory: UserDirectory
    signin: SignIn


def secret_key(settings: Settings) -> str:
    """[dashboard].secret_key, else a key generated once into $ROBMON_HOME."""
    configured = settings.section("dashboard").get("secret_key")
    if configured:
        return str(configured)
    path = settings.home / "dashboard.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


def refuse_anonymous_exposure(settings: Settings, host: str, allow_anonymous_view: bool) -> None:
    """Raises ConfigError for an address beyond this machine while no user is configured: every
    alert and source address would be shown to whoever reaches it."""
    if allow_anonymous_view or is_loopback(host) or load_users(settings):
        return
    raise ConfigError(
        f"refusing to serve the dashboard on {host} with no users: anyone who can reach it would "
        "see every alert and source address; add one with `robmon users add`, bind to "
        "127.0.0.1, or pass --allow-anonymous-view."
    )


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def current_user() -> dict[str, str] | None:
    """The signed-in user of this request ({"name", "role"}, the role as configured now) or
    None: no session, or one that ended (signed out, expired, user removed or changed)."""
    if not has_request_context():
        return None
    if "robmon_user" not in g:
        g.robmon_user = _signed_in_user()
    return dict(g.robmon_user) if g.robmon_user else None


def can_triage() -> tuple[bool, str]:
    """(allowed, why not) for a write from this request."""
    user = current_user()
    if user is None:
        return False, "sign in as a triager to change alerts"
    if user.get("role") != "triager":
        return False, f"{user['name']} is a viewer; only triagers change alerts"
    return True, ""


def _signed_in_user() -> dict[str, str] | None:
    token = session.get(SESSION_TOKEN)
    if not isinstance(token, str) or not token:
        return None
    state = _state()
    live = resolve_session(state.db, token, state.settings.limits)
    if live is None:
        session.pop(SESSION_TOKEN, None)
        return None
    try:
        user = state.directory.users().get(live.user_name)
    except ConfigError as err:  # a users file being edited: nobody may write until it is valid
        log.warning("dashboard users cannot be read, treating the request as signed out: %s", err)
        return None
    if user is None or user_stamp(user.password_hash, user.role) != live.user_stamp:
        reason = "user removed" if user is None else "password or role changed"
        revoke_session(state.db, token, reason)
        log.info("dashboard session of %s ended: %s", live.user_name, reason)
        session.pop(SESSION_TOKEN, None)
        return None
    return {"name": user.name, "role": user.role}


def _state() -> AuthState:
    return current_app.extensions[EXTENSION]


def cookies_secure() -> bool:
    """Cookies get the Secure flag when the dashboard is served over HTTPS."""
    settings = _state().settings
    return settings.https or (settings.trust_proxy and request.is_secure)


class _SessionCookies(SecureCookieSessionInterface):
    def get_cookie_secure(self, app: Flask) -> bool:
        return cookies_secure()


def install(server: Flask, settings: Settings, db: Database) -> None:
    """Sessions, the CSRF check on callbacks, and the /login and /logout routes."""
    config = DashboardSettings.from_settings(settings)
    directory = UserDirectory(settings)
    directory.users()  # a broken users file stops the start, not the first sign-in
    backoff = Backoff(
        free=config.signin_free_failures, cap=config.signin_max_lockout.total_seconds()
    )
    checks = PasswordChecks(config.signin_concurrent_checks, config.signin_queue)
    server.extensions[EXTENSION] = AuthState(config, db, directory, SignIn(backoff, checks))
    server.secret_key = secret_key(settings)
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")
    server.session_interface = _SessionCookies()
    if config.trust_proxy:
        server.wsgi_app = ProxyFix(server.wsgi_app, x_for=1, x_proto=1)  # type: ignore[method-assign]

    @server.before_request
    def _csrf() -> None:
        callback = request.method == "POST" and request.path.endswith("/_dash-update-component")
        if not callback or _token_ok(request.headers.get("X-CSRFToken", "")):
            return
        if current_user() is not None:  # only a signed-in session's callbacks can write
            abort(403)

    @server.after_request
    def _csrf_cookie(response):
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        response.set_cookie(
            CSRF_COOKIE,
            session["csrf"],
            samesite="Strict",
            httponly=False,
            secure=cookies_secure(),
        )
        return response

    server.add_url_rule("/login", "login", _login, methods=["GET", "POST"])
    server.add_url_rule("/logout", "logout", _logout, methods=["POST"])


def _login():
    next_url = safe_next(request.values.get("next", "/"))
    if request.method == "GET":
        return _login_page("", next_url, _csrf_token())
    if not _token_ok(request.form.get("csrf", "")):
        abort(403)
    state = _state()
    name, address = request.form.get("user", "")[:255], request.remote_addr or "unknown"
    try:
        user = state.directory.users().get(name)
    except ConfigError as err:  # a users file being edited: nobody signs in until it is valid
        log.warning("dashboard users cannot be read: %s", err)
        user = None
    try:
        right = state.signin.verify(
            name, user.password_hash if user else None, request.form.get("password", ""), address
        )
    except (TooManyAttempts, SignInBusy) as refusal:
        log.warning("dashboard sign-in refused for %r from %s: %s", name, address, refusal)
        status = 429 if isinstance(refusal, TooManyAttempts) else 503
        page = _login_page(str(refusal), next_url, _csrf_token())
        return page, status, {"Retry-After": str(refusal.retry_after)}
    if not right or user is None:
        log.warning("dashboard sign-in failed for %r from %s", name, address)
        return _login_page("Unknown user or wrong password.", next_url, _csrf_token())
    previous = session.get(SESSION_TOKEN)
    if isinstance(previous, str):
        revoke_session(state.db, previous, "signed in again")
    session.clear()  # a new token and a new CSRF token: nothing of the anonymous session stays
    stamp = user_stamp(user.password_hash, user.role)
    session[SESSION_TOKEN] = start_session(
        state.db, user.name, stamp, address, state.settings.limits
    )
    session["csrf"] = secrets.token_urlsafe(32)
    log.info("dashboard sign-in: %s (%s) from %s", user.name, user.role, address)
    return redirect(next_url)


def _logout():
    if not _token_ok(request.form.get("csrf", "")):
        abort(403)
    token = session.get(SESSION_TOKEN)
    if isinstance(token, str):
        revoke_session(_state().db, token, "signed out")
    session.clear()
    return redirect("/")


def _csrf_token() -> str:
    return session.setdefault("csrf", secrets.token_urlsafe(32))


def _token_ok(sent: str) -> bool:
    """The request carries this session's CSRF token (an empty token never matches)."""
    expected = session.get("csrf") or ""
    return bool(sent) and bool(expected) and hmac.compare_digest(sent, expected)


def safe_next(target: object) -> str:
    """``target`` if it is a path on this site, else "/": no scheme or host, no backslash, no
    control character or whitespace (browsers drop tabs and newlines, so ``/\\t/evil.example``
    would become ``//evil.example``), no leading ``//``, also once percent-decoded."""
    if not isinstance(target, str) or not target.startswith("/") or len(target) > 2048:
        return "/"
    for text in (target, unquote(target)):
        if "\\" in text or any(c.isspace() or not c.isprintable() for c in text):
            return "/"
        if text.startswith("//"):
            return "/"
    try:
        parts = urlsplit(target)
    except ValueError:
        return "/"
    if parts.scheme or parts.netloc or not parts.path.startswith("/"):
        return "/"
    return target


def _login_page(error: str, next_url: str, csrf: str) -> str:
    alert = f'<div class="alert alert-danger">{html.escape(error)}</div>' if error else ""
    return f"""<!doctype html><html><head><title>Sign in · Robustness Monitor</title>
<link rel="stylesheet" href="/vendor/bootstrap.min.css"></head>
<body class="bg-light"><main class="container" style="max-width: 420px; margin-top: 10vh">
<h1 class="h4 mb-3">Robustness Monitor</h1><p class="text-muted">Sign in to triage alerts.</p>
{alert}<form method="post" action="/login">
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<input type="hidden" name="next" value="{html.escape(safe_next(next_url))}">
<div class="mb-3"><label class="form-label" for="user">User</label>
<input class="form-control" id="user" name="user" autocomplete="username" required></div>
<div class="mb-3"><label class="form-label" for="password">Password</label>
<input class="form-control" id="password" name="password" type="password"
 autocomplete="current-password" required></div>
<button class="btn btn-primary" id="sign-in" type="submit">Sign in</button>
<a class="btn btn-link" href="{html.escape(safe_next(next_url))}">Back</a></form></main>
</body></html>"""
