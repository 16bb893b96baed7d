"""Fixtures for the monitoring tests on real processes: a broker and a database of the test's own.

The live tests start several workers and a beat; giving them their own
redis-server and PostgreSQL database keeps their messages, retries and
demo events away from the rest of the suite's shared ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from tests.support.db import migrate
from tests.support.processes import LoggedProcess
from tests.support.services import PostgresDatabase, RedisServer


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server for this test alone."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_database() -> Iterator[PostgresDatabase]:
    """A migrated PostgreSQL database for this test alone, dropped afterwards."""
    database = PostgresDatabase()
    database.create()
    try:
        engine = create_engine(database.url)
        migrate(engine)
        engine.dispose()
        yield database
    finally:
        database.drop()


@pytest.fixture
def processes() -> Iterator[list[LoggedProcess]]:
    """Processes a test starts; every one is killed afterwards, even on failure: nothing outlives the test."""
    started: list[LoggedProcess] = []
    yield started
    for process in reversed(started):
        process.kill()
