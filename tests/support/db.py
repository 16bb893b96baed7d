"""Database helpers for tests: migrate a database, a session rolled back after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from tests.support.services import PostgresDatabase
from tests.support.worker import ROOT


def alembic_config() -> Config:
    return Config(str(ROOT / "alembic.ini"))


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade `engine`'s database to `revision`."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str = "base") -> None:
    """Downgrade `engine`'s database to `revision`."""
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


@contextmanager
def migrated_database(**engine_options: Any) -> Iterator[Engine]:
    """A migrated PostgreSQL database no other test writes to (the run's shared one holds other tests' rows),
    dropped at the end."""
    database = PostgresDatabase()
    database.create()
    engine = create_engine(database.url, **engine_options)
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()
        database.drop()


@contextmanager
def rolled_back_session(engine: Engine) -> Iterator[Session]:
    """A session in an outer transaction that is rolled back at the end; commits become savepoints."""
    with engine.connect() as connection:
        outer = connection.begin()
        session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
        try:
            yield session
        finally:
            session.close()
            outer.rollback()


def committing_factory(session: Session) -> Callable[[], AbstractContextManager[Session]]:
    """A session factory for app.ingest that commits (a savepoint) into the test's session."""

    @contextmanager
    def factory() -> Iterator[Session]:
        try:
            yield session
        except BaseException:
            session.rollback()
            raise
        session.commit()

    return factory
