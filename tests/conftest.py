"""Test environment: fixed before anything imports the app, so settings and
prometheus_client see it; real services are started lazily by fixtures."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_RUN_DIR = Path(tempfile.mkdtemp(prefix="panic-metrics-tests-"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_RUN_DIR / "prometheus_multiproc")
os.environ["DEAD_LETTER_DIR"] = str(_RUN_DIR / "dead_letter")
os.environ["QUARANTINE_DIR"] = str(_RUN_DIR / "quarantine")
os.environ["METRICS_ENABLED"] = "true"
(_RUN_DIR / "prometheus_multiproc").mkdir()

from tests.support.services import PostgresDatabase, RedisServer, free_port

_REDIS_PORT = free_port()
_DATABASE = PostgresDatabase()
# The test process publishes with .delay() to the test redis-server and its
# settings point at the test database, exactly like app code would.
os.environ["BROKER_URL"] = f"redis://127.0.0.1:{_REDIS_PORT}/0"
os.environ["DATABASE_URL"] = _DATABASE.url

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from tests.support.db import migrate, rolled_back_session


@pytest.fixture(scope="session")
def run_dir() -> Path:
    """A directory for this test run's files."""
    return _RUN_DIR


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a port of its own for the whole run."""
    server = RedisServer(_RUN_DIR / "redis", port=_REDIS_PORT)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[PostgresDatabase]:
    """A real PostgreSQL database created (and migrated) for this run, dropped at the end."""
    _DATABASE.create()
    try:
        engine = create_engine(_DATABASE.url)
        migrate(engine)
        engine.dispose()
        yield _DATABASE
    finally:
        from app.db.session import _ENGINES

        for engine in _ENGINES.values():
            engine.dispose()
        _DATABASE.drop()


@pytest.fixture(scope="session")
def pg_engine(pg_database: PostgresDatabase) -> Iterator[Engine]:
    engine = create_engine(pg_database.url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied by each test that wants one."""
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"
    engine = create_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture
def sqlite_engine(sqlite_template: Path, tmp_path: Path) -> Iterator[Engine]:
    """A fresh migrated SQLite database for one test."""
    path = tmp_path / "test.sqlite3"
    path.write_bytes(sqlite_template.read_bytes())
    from app.db.session import _create_engine

    engine = _create_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_engine(request: pytest.FixtureRequest) -> Engine:
    """The same test on the embedded SQLite and on real PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_engine")  # type: ignore[no-any-return]
    return request.getfixturevalue("pg_engine")  # type: ignore[no-any-return]


@pytest.fixture
def db_session(db_engine: Engine) -> Iterator[Session]:
    """A session whose work is rolled back after the test."""
    with rolled_back_session(db_engine) as session:
        yield session
