"""Database helpers for tests: migrate a database, a session rolled back after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine
from sqlalchemy.orm import Session

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
