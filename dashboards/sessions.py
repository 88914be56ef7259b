"""Server-side sessions of the dashboard (table ``dashboard_sessions``).

The browser's cookie carries a random token; the database keeps only its SHA-256, the user's
name and a stamp of the user's password hash and role at sign-in. A session is live until its
absolute limit (``lifetime``), until it has been idle longer than ``idle``, or until it is
revoked: by signing out, or (checked by dashboards.auth on every request) when its user was
removed or the user's password or role changed since.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update

from monitor.db.models import DashboardSession
from monitor.db.session import Database
from monitor.db.types import utcnow

HOUSEKEEPING_GRACE = timedelta(days=7)  # ended sessions are kept this long (who was signed in)


@dataclass(frozen=True)
class SessionLimits:
    idle: timedelta = timedelta(hours=1)
    lifetime: timedelta = timedelta(hours=12)

    @property
    def touch_every(self) -> timedelta:
        """How stale ``last_seen`` may get before a request writes it (a write per request would
        cost more than the check)."""
        return min(timedelta(minutes=1), self.idle / 10)


@dataclass(frozen=True)
class LiveSession:
    user_name: str
    user_stamp: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def user_stamp(password_hash: str, role: str) -> str:
    """Changes whenever the user's password or role does (the session then ends)."""
    return hashlib.sha256(f"{role}\0{password_hash}".encode()).hexdigest()


def start_session(
    db: Database, user_name: str, stamp: str, address: str | None, limits: SessionLimits
) -> str:
    """A new session for ``user_name``; returns the token for the cookie (never stored)."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    with db.session() as s:
        s.execute(
            delete(DashboardSession).where(DashboardSession.expires_at < now - HOUSEKEEPING_GRACE)
        )
        s.add(
            DashboardSession(
                id_hash=token_hash(token),
                user_name=user_name,
                user_stamp=stamp,
                address=(address or "")[:64] or None,
                created_at=now,
                last_seen=now,
                expires_at=now + limits.lifetime,
            )
        )
    return token


def resolve_session(db: Database, token: str, limits: SessionLimits) -> LiveSession | None:
    """The live session of ``token`` (its ``last_seen`` refreshed), or None when it is unknown,
    revoked, past its absolute limit or idle for too long."""
    now = utcnow()
    with db.session() as s:
        row = s.get(DashboardSession, token_hash(token))
        if row is None or row.revoked_at is not None or not _live(row, now, limits):
            return None
        if now - row.last_seen >= limits.touch_every:
            row.last_seen = now
        return LiveSession(row.user_name, row.user_stamp)


def revoke_session(db: Database, token: str, reason: str) -> None:
    with db.session() as s:
        s.execute(
            update(DashboardSession)
            .where(
                DashboardSession.id_hash == token_hash(token),
                DashboardSession.revoked_at.is_(None),
            )
            .values(revoked_at=utcnow(), revoked_reason=reason)
        )


def revoke_user_sessions(db: Database, user_name: str, reason: str) -> int:
    """Ends every live session of ``user_name``; returns how many there were."""
    now = utcnow()
    with db.session() as s:
        result = s.execute(
            update(DashboardSession)
            .where(
                DashboardSession.user_name == user_name,
                DashboardSession.revoked_at.is_(None),
                DashboardSession.expires_at > now,
            )
            .values(revoked_at=now, revoked_reason=reason)
        )
        return result.rowcount or 0


def _live(row: DashboardSession, now: datetime, limits: SessionLimits) -> bool:
    """Within both limits (as configured now, in case they were shortened since sign-in)."""
    ends = min(row.expires_at, row.created_at + limits.lifetime)
    return now < ends and now - row.last_seen < limits.idle
