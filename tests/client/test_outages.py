"""A sick broker never stalls a call, and every event still reaches the database exactly once.

The test's own redis-server is stopped (connection refused), paused (CLIENT
PAUSE: commands hang), replaced by a TCP listener that accepts and never
answers, and restarted. Each fault is in place before the events are
recorded and lifted only once the sender has spooled them, so the path
through the spool is taken by construction, not by timing luck.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine

from panic_metrics_client import Client
from tests.client.conftest import BreakableRedis, ClientFactory, stored_count
from tests.integration.conftest import WorkerFactory
from tests.support.services import silent_listener, wait_until
from tests.support.worker import total

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS_PER_PHASE = 25


class CallWatch:
    """Records every socket operation the calling thread makes while inside a client call.

    "A call never stalls" is checked by what it does, not by a stopwatch on a
    shared machine: a call that touched the broker's socket could wait on it
    (bench/publish.py measures the latency itself).
    """

    OPERATIONS = ("connect", "connect_ex", "send", "sendall", "sendto", "recv", "recv_into", "recvfrom")

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._inside = threading.local()
        self.calls = 0
        self.touched: list[str] = []
        for name in self.OPERATIONS:
            monkeypatch.setattr(socket.socket, name, self._watched(name, getattr(socket.socket, name)))

    def _watched(self, name: str, original: Any) -> Any:
        def operation(sock: socket.socket, *args: Any, **kwargs: Any) -> Any:
            if getattr(self._inside, "call", False):
                self.touched.append(name)
            return original(sock, *args, **kwargs)

        return operation

    @contextmanager
    def call(self) -> Iterator[None]:
        self._inside.call = True
        self.calls += 1
        try:
            yield
        finally:
            self._inside.call = False


@pytest.fixture
def watch() -> Iterator[CallWatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield CallWatch(patch)


def record_phase(client: Client, zone: str, phase: str, watch: CallWatch) -> list[uuid.UUID]:
    """Record a phase's events (a panic request each, plus HTTP requests), watching every call; the panic
    requests' ids (an HTTP request is not stored under its own: it goes out within its route's summary)."""
    ids = []
    for i in range(EVENTS_PER_PHASE):
        with watch.call():
            event_id = client.record_fields(
                "panic_request",
                {
                    "service_type": "security",
                    "status": "accepted",
                    "zone": zone,
                    "firm_id": phase,
                    "response_time": 1.5 + i,
                },
            )
        with watch.call():
            http_id = client.record_fields(
                "http_request", {"method": "GET", "endpoint": f"/{zone}/{{id}}", "status": 200, "duration": 0.001 * i}
            )
        assert event_id is not None
        assert http_id is not None
        ids.append(event_id)
    return ids


def spooled_at_least(client: Client, n: int) -> bool:
    return client.stats()["spooled"] >= n


def test_every_event_survives_a_stopped_paused_and_silent_broker_exactly_once(
    make_client: ClientFactory,
    breakable_redis: BreakableRedis,
    start_worker: WorkerFactory,
    pg_engine: Engine,
    watch: CallWatch,
) -> None:
    """No call touches the broker in any state; after the broker returns, each event is stored once."""
    unique = f"t{uuid.uuid4().hex[:10]}"
    client = make_client(broker_url=breakable_redis.url, send_timeout_ms=300, retry_interval_ms=200)
    # The watch sees what a call would do if it reached for the network.
    with watch.call(), socket.create_connection(("127.0.0.1", breakable_redis.port)):
        pass
    assert watch.touched == ["connect"]
    watch.touched.clear()
    watch.calls = 0
    ids: list[uuid.UUID] = []

    ids += record_phase(client, unique, "up", watch)
    assert client.flush(timeout=30)
    assert client.stats()["spooled"] == 0

    breakable_redis.stop()  # refused
    ids += record_phase(client, unique, "refused", watch)
    wait_until(lambda: spooled_at_least(client, EVENTS_PER_PHASE), timeout=30, what="events spooled (refused)")
    breakable_redis.start()
    wait_until(lambda: client.stats()["spool_events"] == 0, timeout=60, what="the spool drained after restart")

    breakable_redis.cli("CLIENT", "PAUSE", "600000", "WRITE")  # publishing hangs
    spooled_before = client.stats()["spooled"]
    ids += record_phase(client, unique, "paused", watch)
    wait_until(
        lambda: spooled_at_least(client, spooled_before + EVENTS_PER_PHASE),
        timeout=30,
        what="events spooled (paused)",
    )
    breakable_redis.cli("CLIENT", "UNPAUSE")
    wait_until(lambda: client.stats()["spool_events"] == 0, timeout=60, what="the spool drained after unpause")

    breakable_redis.stop()
    spooled_before = client.stats()["spooled"]
    with silent_listener(breakable_redis.port):  # connects, never answers
        ids += record_phase(client, unique, "silent", watch)
        wait_until(
            lambda: spooled_at_least(client, spooled_before + EVENTS_PER_PHASE),
            timeout=30,
            what="events spooled (silent)",
        )
    breakable_redis.start()
    wait_until(lambda: client.stats()["spool_events"] == 0, timeout=60, what="the spool drained after the silence")
    assert client.flush(timeout=30)

    assert watch.calls == 4 * 2 * EVENTS_PER_PHASE
    assert watch.touched == [], f"calls used the network: {watch.touched}"
    stats = client.stats()
    assert stats["invalid"] == stats["dropped_queue_full"] == stats["dropped_spool_full"] == 0
    assert stats["sent"] >= len(ids)  # a message resent after a timeout may reach the broker twice

    worker = start_worker(BROKER_URL=breakable_redis.url)
    wait_until(lambda: stored_count(pg_engine, ids) == len(ids), timeout=120, what="every event stored")
    assert stored_count(pg_engine, ids) == len(ids) == 4 * EVENTS_PER_PHASE
    wait_until(lambda: breakable_redis.queue_length() == 0, timeout=60, what="the queue consumed")

    def counted() -> float:
        return total(worker.scrape(), "panic_requests_total", zone=unique)

    def requests_counted() -> float:
        return total(worker.scrape(), "http_requests_total", endpoint=f"/{unique}/{{id}}")

    wait_until(lambda: counted() == 4 * EVENTS_PER_PHASE, timeout=60, what="every panic request counted")
    wait_until(lambda: requests_counted() == 4 * EVENTS_PER_PHASE, timeout=60, what="every HTTP request counted")
    samples = worker.scrape()
    assert total(samples, "panic_requests_total", zone=unique) == 4 * EVENTS_PER_PHASE
    assert total(samples, "http_requests_total", endpoint=f"/{unique}/{{id}}") == 4 * EVENTS_PER_PHASE
