"""The fault harness: real redis-server, PostgreSQL and `celery worker` processes, a fault injected, then checked.

Every fault test ends with the same three checks (`Stream.assert_complete`):
every event whose publish was acknowledged is stored, each exactly once, and
the worker consumes again, proved by a fresh event being stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import Engine, create_engine, func, select

from app.config import Settings
from app.db.models import MetricEvent
from tests.support.db import migrate
from tests.support.services import PostgresDatabase, PrivateCluster, RedisServer, wait_until
from tests.support.worker import Worker, embedded_environment
from workers.celery_app import create_app

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Short enough that a killed worker's messages come back within a test; the
# worker refuses a visibility timeout below its retry backoff, so that is short too.
VISIBILITY_TIMEOUT = 4
FAST_RECOVERY = {
    "BROKER_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT),
    "TASK_RETRY_BACKOFF_MAX_SECONDS": "2",
    # kombu scans for a dead worker's unacknowledged messages every interval
    # x throttle seconds (about 100 s by default): every second here.
    "BROKER_UNACKED_RESTORE_INTERVAL_SECONDS": "1",
}
REDIS_IN_FLIGHT = {
    # Redis's visibility timeout runs from delivery, not from the start of the
    # task: a message reserved ahead and still waiting in the worker after 4 s
    # is restored by the scan and delivered again while its first copy waits.
    # On a loaded 2-core machine that happens to most of a 4-message-per-child
    # prefetch, every copy ages the same way, and the queue drains slower and
    # slower (seen: a second worker storing 1 of 80 messages in 90 s). With one
    # message per child only a running task holds an unacknowledged message,
    # and the timeout only has to exceed one task's run.
    # (Redis only: the embedded broker has no visibility timeout, and its
    # blocking pool with one message per child drains much slower.)
    "WORKER_PREFETCH_MULTIPLIER": "1",
}


def fault_environment(env: dict[str, str]) -> dict[str, str]:
    """A fault worker's environment: fast recovery, one message per child on Redis, then the test's own settings."""
    redis = env.get("BROKER_URL", "").startswith("redis")
    return {**FAST_RECOVERY, **(REDIS_IN_FLIGHT if redis else {}), **env}


class Stream:
    """Events published to one broker and looked up in one database, by a zone of their own."""

    def __init__(self, broker_env: dict[str, str], engine: Engine) -> None:
        settings = Settings(
            broker_url=broker_env["BROKER_URL"],
            **({"broker_folder": Path(broker_env["BROKER_FOLDER"])} if "BROKER_FOLDER" in broker_env else {}),
        )
        self.app: Celery = create_app(settings)
        self.engine = engine
        self.zone = f"f{uuid.uuid4().hex[:10]}"
        self.acknowledged: set[str] = set()

    def event(self, **fields: object) -> dict[str, object]:
        """One panic request event in this stream's zone, with a fresh event_id."""
        return {
            "kind": "panic_request",
            "event_id": str(uuid.uuid4()),
            "service_type": "security",
            "status": "requested",
            "zone": self.zone,
            **fields,
        }

    def publish(self, events: list[dict[str, object]]) -> None:
        """Publish one `record_events` message; its events count as acknowledged once this returns."""
        self.app.send_task("panic_metrics.events.record_events", args=[events], queue="events")
        self.acknowledged.update(str(event["event_id"]) for event in events)

    def publish_many(self, messages: int, per_message: int = 5) -> None:
        for _ in range(messages):
            self.publish([self.event() for _ in range(per_message)])

    def stored(self) -> int:
        with self.engine.connect() as connection:
            query = select(func.count()).select_from(MetricEvent).where(MetricEvent.zone == self.zone)
            return int(connection.execute(query).scalar_one())

    def stored_ids(self) -> list[str]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(MetricEvent.event_id).where(MetricEvent.zone == self.zone))
            return [str(row[0]) for row in rows]

    def wait_stored(self, count: int, *, timeout: float, what: str = "") -> None:
        wait_until(lambda: self.stored() >= count, timeout=timeout, what=what or f"{count} events stored")

    def assert_complete(self, *, timeout: float = 90) -> None:
        """Every acknowledged event stored exactly once, and a fresh event stored after the fault."""
        self.wait_stored(len(self.acknowledged), timeout=timeout, what="every acknowledged event stored")
        ids = self.stored_ids()
        assert len(ids) == len(set(ids)), "an event was stored twice"
        assert self.acknowledged <= set(ids), f"lost: {sorted(self.acknowledged - set(ids))[:5]}"
        fresh = self.event()
        self.publish([fresh])
        wait_until(lambda: str(fresh["event_id"]) in self.stored_ids(), timeout=timeout, what="a fresh event stored")
        assert sorted(self.stored_ids()) == sorted(self.acknowledged)


WorkerStarter = Callable[..., Worker]


@pytest.fixture
def start_fault_worker(tmp_path: Path) -> Iterator[WorkerStarter]:
    """Start real `celery worker` processes with the environment given; every one is killed afterwards."""
    started: list[Worker] = []

    def start(
        env: dict[str, str],
        *,
        concurrency: int = 2,
        name: str | None = None,
        wait: bool = True,
        extra: tuple[str, ...] = (),
    ) -> Worker:
        workdir = tmp_path / (name or f"worker{len(started)}")
        worker = Worker(fault_environment(env), workdir, concurrency=concurrency, extra=extra)
        started.append(worker)
        if wait:
            return worker.start()
        worker.start_process()
        return worker

    yield start
    for worker in started:
        worker.kill()


@pytest.fixture(scope="module")
def shared_redis_workers(
    redis_server: RedisServer, pg_database: PostgresDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Worker]]:
    """Two plain workers on the run's Redis and PostgreSQL, shared by the faults of a module that do not harm them.

    A worker start costs seconds on a loaded machine; faults that neither kill
    nor reconfigure a worker (duplicates, a refused message) reuse these. Each
    test still checks them with a stream of its own zone.
    """
    env = fault_environment({"BROKER_URL": redis_server.url, "DATABASE_URL": pg_database.url})
    directory = tmp_path_factory.mktemp("shared-workers")
    workers = [Worker(env, directory / f"w{i}") for i in range(2)]
    try:
        for worker in workers:
            worker.start_process()  # both start at once
        for worker in workers:
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers:
            worker.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """redis-server processes of this test only (the faults stop and kill them)."""
    servers: list[RedisServer] = []

    def start(**kwargs: object) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        if server.process is not None:
            server.process.kill()
            server.process.wait(timeout=10)


@pytest.fixture
def redis_stream(
    redis_server: RedisServer, pg_database: PostgresDatabase, pg_engine: Engine
) -> tuple[dict[str, str], Stream]:
    """The run's Redis and PostgreSQL, and a stream of events of this test's own."""
    env = {"BROKER_URL": redis_server.url, "DATABASE_URL": pg_database.url}
    return env, Stream(env, pg_engine)


@pytest.fixture
def embedded_stream(tmp_path: Path) -> Iterator[tuple[dict[str, str], Stream]]:
    """The embedded default (filesystem broker, SQLite) under this test's directory."""
    env = embedded_environment(tmp_path / "embedded")
    engine = create_engine(env["DATABASE_URL"])
    yield env, Stream(env, engine)
    engine.dispose()


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[tuple[PrivateCluster, Engine]]:
    """A PostgreSQL cluster of this module's own, migrated: the faults stop and restart it."""
    cluster = PrivateCluster()
    cluster.init()
    cluster.start()
    try:
        engine = create_engine(cluster.url)
        migrate(engine)
        yield cluster, engine
        engine.dispose()
    finally:
        cluster.destroy()
