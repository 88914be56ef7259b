"""Alembic, driven from code: the migrations live in the top-level ``migrations/`` package."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from monitor.errors import DatabaseError


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(engine: Engine) -> Config:
    """An Alembic config that runs on ``engine``'s connection (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["engine"] = engine
    return config


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str

    @property
    def is_current(self) -> bool:
        return self.current == self.head


def schema_state(engine: Engine) -> SchemaState:
    """The database's revision against the newest migration (DatabaseError for a revision
    that no migration here knows)."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    head = script.get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current is not None:
        try:
            script.get_revision(current)
        except Exception as err:  # alembic's ResolutionError
            raise DatabaseError(
                f"the database is at schema revision {current}, which this robmon does not "
                "know; was it migrated by a newer robmon?"
            ) from err
    return SchemaState(current=current, head=head or "base")


def upgrade(engine: Engine, revision: str = "head") -> None:
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    command.downgrade(alembic_config(engine), revision)


def history(engine: Engine) -> list[tuple[str, str]]:
    """(revision, message) from oldest to newest."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    return [(rev.revision, rev.doc or "") for rev in reversed(list(script.walk_revisions()))]
