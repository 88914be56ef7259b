"""Named leases in the database: at most one holder per name until its lease expires.

APScheduler 3 cannot share a job store between schedulers, so a second ``robmon scheduler``
stands by until the first one's ``scheduler`` lease lapses (it renews every few seconds while
alive). Works the same on SQLite and PostgreSQL: the claim is one conditional UPDATE, or an
INSERT that the primary key makes unique.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from monitor.db.models import Lease
from monitor.db.session import Database
from monitor.db.types import utcnow


def acquire(db: Database, name: str, holder: str, ttl: float) -> bool:
    """Take or renew lease ``name`` for ``ttl`` seconds; False while someone else holds it."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl)
    with db.session() as s:
        result = s.execute(
            update(Lease)
            .where(Lease.name == name, (Lease.holder == holder) | (Lease.expires_at < now))
            .values(holder=holder, expires_at=expires)
        )
        if result.rowcount:
            return True
    try:
        with db.session() as s:
            s.add(Lease(name=name, holder=holder, acquired_at=now, expires_at=expires))
        return True
    except IntegrityError:
        return False


def release(db: Database, name: str, holder: str) -> None:
    with db.session() as s:
        s.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


def current_holder(db: Database, name: str) -> tuple[str, datetime] | None:
    """(holder, expiry) of an unexpired lease, or None."""
    with db.session() as s:
        row = s.execute(select(Lease.holder, Lease.expires_at).where(Lease.name == name)).first()
    if row is None or row.expires_at < utcnow():
        return None
    return row.holder, row.expires_at
