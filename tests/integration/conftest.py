"""Integration fixtures: a real worker on the test redis-server and PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.support.services import PostgresDatabase, RedisServer
from tests.support.worker import Worker

WorkerFactory = Callable[..., Worker]


@pytest.fixture
def unique() -> str:
    """A short unique label value (zone, firm) so each test's series stand apart."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def start_worker(
    redis_server: RedisServer, pg_database: PostgresDatabase, pg_engine: Engine, tmp_path: Path
) -> Iterator[WorkerFactory]:
    """Start real `celery worker` processes on the test Redis and PostgreSQL; all are stopped afterwards."""
    started: list[Worker] = []

    def start(
        *, concurrency: int = 2, workdir: Path | None = None, health_url: str | None = None, **env: str
    ) -> Worker:
        worker = Worker(
            {"BROKER_URL": redis_server.url, "DATABASE_URL": pg_database.url, **env},
            workdir or tmp_path / f"worker{len(started)}",
            concurrency=concurrency,
        )
        if health_url is not None:  # the worker serves no endpoint; wait on the one given
            worker.health_url = health_url
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop()
