"""The embedded SQLite database gets the same schema from the migrations as the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine

from app.db.models import Base


def test_models_match_the_migrations_on_sqlite(sqlite_engine: Engine) -> None:
    """The SQLAlchemy models and the migrated SQLite schema are the same."""
    with sqlite_engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert list(compare_metadata(context, Base.metadata)) == []
