"""Migrations: upgrade, downgrade and upgrade again on real PostgreSQL; models match them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect

from app.db.models import Base
from tests.support.db import downgrade, migrate
from tests.support.services import PostgresDatabase

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_engine(pg_database: PostgresDatabase) -> Iterator[Engine]:
    """A database of this test's own, since it downgrades to nothing."""
    database = PostgresDatabase()
    database.create()
    engine = create_engine(database.url)
    try:
        yield engine
    finally:
        engine.dispose()
        database.drop()


def schema_differences(engine: Engine) -> list[object]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))


def test_upgrade_downgrade_upgrade_round_trips(scratch_engine: Engine) -> None:
    """Every migration applies, reverts to an empty database and applies again."""
    migrate(scratch_engine)
    tables = set(inspect(scratch_engine).get_table_names())
    assert {"metric_events", "label_values"} <= tables
    downgrade(scratch_engine)
    assert set(inspect(scratch_engine).get_table_names()) <= {"alembic_version"}
    migrate(scratch_engine)
    assert set(inspect(scratch_engine).get_table_names()) == tables


def test_models_match_the_migrations_on_postgresql(scratch_engine: Engine) -> None:
    """The SQLAlchemy models and the migrated PostgreSQL schema are the same."""
    migrate(scratch_engine)
    assert schema_differences(scratch_engine) == []
