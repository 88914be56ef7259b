"""Upgrade from empty gives exactly the models' schema; downgrade and upgrade again, on both
SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from monitor.db import migrate
from monitor.db.models import Base
from monitor.db.session import create_db_engine


def _differences(engine) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_upgrade_from_empty_matches_models_then_down_and_up(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        assert migrate.schema_state(engine).current is None
        migrate.upgrade(engine)
        state = migrate.schema_state(engine)
        assert state.is_current and state.current == state.head
        assert _differences(engine) == []
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables

        migrate.downgrade(engine, "base")
        assert migrate.schema_state(engine).current is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

        migrate.upgrade(engine)
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_every_revision_downgrades_one_step(db_url: str) -> None:
    engine = create_db_engine(db_url)
    try:
        revisions = [rev for rev, _ in migrate.history(engine)]
        for rev in revisions:
            migrate.upgrade(engine, rev)
        for previous in reversed([None, *revisions[:-1]]):
            migrate.downgrade(engine, "-1")
            assert migrate.schema_state(engine).current == previous
    finally:
        engine.dispose()


def test_embedded_database_is_migrated_on_first_use(home, robmon) -> None:
    result = robmon("db", "current", "--json")
    assert result.code == 0
    assert result.json()["current"] is None
    # any command that needs the database migrates the embedded default first
    result = robmon("audits", "list", "--json")
    assert result.code == 0, result.stderr
    after = robmon("db", "current", "--json").json()
    assert after["up_to_date"] is True


def test_external_database_out_of_date_stops_with_one_sentence(
    home, postgres_url, monkeypatch, robmon
) -> None:
    monkeypatch.setenv("ROBMON_DB_URL", postgres_url)
    result = robmon("audits", "list")
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: the database at postgresql")
    assert lines[0].endswith("run `robmon db upgrade`.")
    assert (
        robmon("db", "upgrade", "--json").json()["to"]
        == robmon("db", "current", "--json").json()["head"]
    )
    assert robmon("audits", "list", "--json").code == 0
