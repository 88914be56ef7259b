"""Engines and sessions; a database is checked against the migrations before first use."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import Settings, mask_secrets
from monitor.db import migrate
from monitor.errors import DatabaseError, DatabaseOutOfDate

log = logging.getLogger(__name__)


@dataclass
class Database:
    """An engine plus its session factory; ``session()`` commits on success, rolls back on error."""

    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()


def create_db_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    parsed = make_url(url)
    if parsed.drivername.startswith("postgresql") and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True)
    except ModuleNotFoundError as err:
        raise DatabaseError(
            f"the driver for {parsed.drivername} is not installed "
            "(install robustness-monitor[postgres] for PostgreSQL)."
        ) from err


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def open_database(settings: Settings, *, check_schema: bool = True) -> Database:
    """Connect to the configured database and make sure its schema is current.

    The embedded default is migrated on the spot; an external database that is behind raises
    ``DatabaseOutOfDate`` so that upgrades stay a deliberate step.
    """
    engine = create_db_engine(settings.db_url)
    shown = mask_secrets(settings.db_url)
    try:
        if check_schema:
            state = migrate.schema_state(engine)
            if state.is_current:
                pass
            elif settings.embedded_db:
                log.info("migrating the embedded database %s to %s", shown, state.head)
                migrate.upgrade(engine)
            else:
                behind = "empty" if state.current is None else f"at revision {state.current}"
                raise DatabaseOutOfDate(
                    f"the database at {shown} is {behind} but this robmon needs {state.head}; "
                    "run `robmon db upgrade`."
                )
    except OperationalError as err:
        engine.dispose()
        reason = str(err.orig).strip().splitlines()[0] if err.orig else str(err)
        raise DatabaseError(f"cannot use the database at {shown}: {reason}.") from err
    except SQLAlchemyError as err:
        engine.dispose()
        raise DatabaseError(f"cannot use the database at {shown}: {err}.") from err
    return Database(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False))
