"""Who may do what on the dashboard: viewing is open (the server binds to 127.0.0.1 unless told
otherwise); every write (alert triage) needs a signed-in user with the ``triager`` role.

Users come from the configuration: ``[dashboard.users.NAME]`` tables in robmon.toml and the file
``$ROBMON_HOME/dashboard-users.toml`` that ``robmon users add`` (and the demo) write, each with a
``password_hash`` (werkzeug's scrypt) and a ``role`` (``viewer`` or ``triager``). Sessions are
signed cookies (HttpOnly, SameSite=Strict). CSRF: a per-session token is set as the
``_csrf_token`` cookie, which Dash's renderer echoes as the ``X-CSRFToken`` header on every
callback; a signed-in session's callbacks without the matching header are refused, and the
sign-in form carries the token too.
"""

from __future__ import annotations

import hmac
import html
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, abort, redirect, request, session
from werkzeug.security import check_password_hash, generate_password_hash

from monitor.config import Settings
from monitor.errors import ConfigError

ROLES = ("viewer", "triager")
USERS_FILE = "dashboard-users.toml"
CSRF_COOKIE = "_csrf_token"


@dataclass(frozen=True)
class User:
    name: str
    role: str
    password_hash: str


def users_file(settings: Settings) -> Path:
    return settings.home / USERS_FILE


def load_users(settings: Settings) -> dict[str, User]:
    """Users from robmon.toml and from $ROBMON_HOME/dashboard-users.toml (the file wins)."""
    tables = dict(settings.section("dashboard").get("users", {}))
    path = users_file(settings)
    if path.exists():
        try:
            tables.update(tomllib.loads(path.read_text(encoding="utf-8")).get("users", {}))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}.") from None
    users = {}
    for name, entry in tables.items():
        if not isinstance(entry, dict) or "password_hash" not in entry:
            raise ConfigError(f"dashboard user {name!r} needs a password_hash.")
        role = entry.get("role", "viewer")
        if role not in ROLES:
            raise ConfigError(f"dashboard user {name!r} has role {role!r}; use viewer or triager.")
        users[name] = User(name, role, entry["password_hash"])
    return users


def save_user(settings: Settings, name: str, password: str, role: str) -> Path:
    """Add or replace a user in $ROBMON_HOME/dashboard-users.toml (hashed password)."""
    if role not in ROLES:
        raise ConfigError(f"role must be viewer or triager, not {role!r}.")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError("a user name is letters, digits, '-', '_' and '.'.")
    path = users_file(settings)
    entries = {}
    if path.exists():
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("users", {})
    entries[name] = {"password_hash": generate_password_hash(password), "role": role}
    lines = []
    for user, entry in sorted(entries.items()):
        lines += [
            f'[users."{user}"]',
            f'password_hash = "{entry["password_hash"]}"',
            f'role = "{entry["role"]}"',
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")
    path.chmod(0o600)
    return path


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


def current_user() -> dict[str, str] | None:
    """The signed-in user of this request ({"name", "role"}) or None."""
    user = session.get("user")
    return dict(user) if isinstance(user, dict) else None


def can_triage() -> tuple[bool, str]:
    """(allowed, why not) for a write from this request."""
    user = current_user()
    if user is None:
        return False, "sign in as a triager to change alerts"
    if user.get("role") != "triager":
        return False, f"{user['name']} is a viewer; only triagers change alerts"
    return True, ""


def install(server: Flask, settings: Settings) -> None:
    """Sessions, the CSRF check on callbacks, and the /login and /logout routes."""
    server.secret_key = secret_key(settings)
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict")

    @server.before_request
    def _csrf() -> None:
        callback = request.method == "POST" and request.path.endswith("/_dash-update-component")
        signed_in = current_user() is not None
        if callback and signed_in and not _token_ok(request.headers.get("X-CSRFToken", "")):
            abort(403)

    @server.after_request
    def _csrf_cookie(response):
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        response.set_cookie(CSRF_COOKIE, session["csrf"], samesite="Strict", httponly=False)
        return response

    @server.route("/login", methods=["GET", "POST"])
    def login():
        error = ""
        if request.method == "POST":
            if not _token_ok(request.form.get("csrf", "")):
                abort(403)
            name = request.form.get("user", "")
            user = load_users(settings).get(name)
            if user and check_password_hash(user.password_hash, request.form.get("password", "")):
                session["user"] = {"name": user.name, "role": user.role}
                session["csrf"] = secrets.token_urlsafe(32)  # a fresh token per sign-in
                return redirect(_safe_next(request.form.get("next", "/")))
            error = "Unknown user or wrong password."
        return _login_page(
            error,
            request.args.get("next", "/"),
            session.setdefault("csrf", secrets.token_urlsafe(32)),
        )

    @server.route("/logout", methods=["POST"])
    def logout():
        if not _token_ok(request.form.get("csrf", "")):
            abort(403)
        session.clear()
        return redirect("/")


def _token_ok(sent: str) -> bool:
    """The request carries this session's CSRF token (an empty token never matches)."""
    expected = session.get("csrf") or ""
    return bool(sent) and bool(expected) and hmac.compare_digest(sent, expected)


def _safe_next(target: str) -> str:
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _login_page(error: str, next_url: str, csrf: str) -> str:
    alert = f'<div class="alert alert-danger">{html.escape(error)}</div>' if error else ""
    return f"""<!doctype html><html><head><title>Sign in · Robustness Monitor</title>
<link rel="stylesheet" href="/vendor/bootstrap.min.css"></head>
<body class="bg-light"><main class="container" style="max-width: 420px; margin-top: 10vh">
<h1 class="h4 mb-3">Robustness Monitor</h1><p class="text-muted">Sign in to triage alerts.</p>
{alert}<form method="post" action="/login">
<input type="hidden" name="csrf" value="{html.escape(csrf)}">
<input type="hidden" name="next" value="{html.escape(_safe_next(next_url))}">
<div class="mb-3"><label class="form-label" for="user">User</label>
<input class="form-control" id="user" name="user" autocomplete="username" required></div>
<div class="mb-3"><label class="form-label" for="password">Password</label>
<input class="form-control" id="password" name="password" type="password"
 autocomplete="current-password" required></div>
<button class="btn btn-primary" id="sign-in" type="submit">Sign in</button>
<a class="btn btn-link" href="{html.escape(_safe_next(next_url))}">Back</a></form></main>
</body></html>"""
