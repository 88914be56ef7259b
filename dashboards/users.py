"""Dashboard users: ``[dashboard.users.NAME]`` tables in robmon.toml and the file
``$ROBMON_HOME/dashboard-users.toml`` that ``robmon users add`` (and the demo) write, each with a
``password_hash`` (werkzeug's scrypt) and a ``role`` (``viewer`` or ``triager``); the file wins.
``UserDirectory`` re-reads the file when it changes, so every request can ask for a user's
current role."""

from __future__ import annotations

import os
import secrets
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from werkzeug.security import generate_password_hash

from monitor.config import Settings
from monitor.errors import ConfigError

ROLES = ("viewer", "triager")
USERS_FILE = "dashboard-users.toml"


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
    tables.update(_users_file_tables(users_file(settings)))
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
    """Add or replace a user in $ROBMON_HOME/dashboard-users.toml (hashed password); the user's
    open sessions end at their next request (their password stamp no longer matches)."""
    if role not in ROLES:
        raise ConfigError(f"role must be viewer or triager, not {role!r}.")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError("a user name is letters, digits, '-', '_' and '.'.")
    path = users_file(settings)
    entries = _users_file_tables(path)
    entries[name] = {"password_hash": generate_password_hash(password), "role": role}
    _write_users_file(path, entries)
    return path


def remove_user(settings: Settings, name: str) -> Path:
    """Remove a user from $ROBMON_HOME/dashboard-users.toml; the user's sessions end with it."""
    path = users_file(settings)
    entries = _users_file_tables(path)
    if name not in entries:
        raise ConfigError(f"{name!r} is not a user in {path}.")
    del entries[name]
    _write_users_file(path, entries)
    return path


def _users_file_tables(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return dict(tomllib.loads(path.read_text(encoding="utf-8")).get("users", {}))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}.") from None


def _write_users_file(path: Path, entries: dict[str, Any]) -> None:
    """Written beside and renamed over the old file: a reader never sees half a file, and the
    dashboard's cache (keyed by the file's identity) always sees the change."""
    lines = []
    for user, entry in sorted(entries.items()):
        lines += [
            f'[users."{user}"]',
            f'password_hash = "{entry["password_hash"]}"',
            f'role = "{entry["role"]}"',
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    temporary.touch(mode=0o600)
    temporary.write_text("\n".join(lines), encoding="utf-8")
    os.replace(temporary, path)


class UserDirectory:
    """The users, re-read only when the users file changes (its inode, size or mtime), so that
    every request can afford to ask for a user's current role."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | bool | None = False
        self._users: dict[str, User] = {}

    def users(self) -> dict[str, User]:
        path = users_file(self.settings)
        try:
            stat = path.stat()
            stamp: tuple[int, int, int] | None = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._users, self._stamp = load_users(self.settings), stamp
            return self._users
