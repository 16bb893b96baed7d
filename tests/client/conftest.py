"""Fixtures for the client's tests: clients on a spool of their own, a redis-server a test may break."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from app.db.models import MetricEvent
from panic_metrics_client import Client, ClientSettings
from tests.integration.conftest import start_worker, unique  # noqa: F401 - fixtures shared with the worker's tests
from tests.support.services import RedisServer

ClientFactory = Callable[..., Client]


def in_a_forked_child(body: Callable[[], str]) -> str:
    """Run `body` in a forked child (a pre-forking server's worker) and return the text it returned.

    The child exits without running the parent's atexit hooks, and must exit 0.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.write(write, body().encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    text = os.read(read, 1000).decode()
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0
    return text


def stored_count(engine: Engine, ids: Sequence[uuid.UUID | str]) -> int:
    """How many of the events `ids` the worker stored."""
    with engine.connect() as connection:
        query = select(func.count()).select_from(MetricEvent).where(MetricEvent.event_id.in_(ids))
        return int(connection.execute(query).scalar_one())


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[ClientFactory]:
    """Clients in development mode with a spool under the test's directory; all closed afterwards."""
    made: list[Client] = []

    def make(**settings: Any) -> Client:
        values: dict[str, Any] = {"spool_dir": tmp_path / "spool", "mode": "development", **settings}
        client = Client(ClientSettings(**values))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close(timeout=5)


class BreakableRedis(RedisServer):
    """A redis-server a test stops, pauses and restarts; what it holds survives a restart (SAVE before stop)."""

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.cli("SAVE")  # started with --save "": keep the queued messages across the restart
        super().stop()

    def queue_length(self, queue: str = "events") -> int:
        return int(self.cli("LLEN", queue))


@pytest.fixture
def breakable_redis(tmp_path: Path) -> Iterator[BreakableRedis]:
    """A redis-server of this test's own."""
    server = BreakableRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait(timeout=10)
        server.process = None
