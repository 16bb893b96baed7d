"""A sick broker never stalls a call, and every event still reaches the database exactly once.

The test's own redis-server is stopped (connection refused), paused (CLIENT
PAUSE: commands hang), replaced by a TCP listener that accepts and never
answers, and restarted. Each fault is in place before the events are
recorded and lifted only once the sender has spooled them, so the path
through the spool is taken by construction, not by timing luck.
"""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import Engine, func, select

from app.db.models import MetricEvent
from panic_metrics_client import Client
from tests.client.conftest import BreakableRedis, ClientFactory
from tests.integration.conftest import WorkerFactory
from tests.support.services import silent_listener, wait_until
from tests.support.worker import total

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVENTS_PER_PHASE = 25


def record_phase(client: Client, zone: str, phase: str, call_seconds: list[float]) -> list[uuid.UUID]:
    """Record a phase's events (a panic request each, plus HTTP requests), timing every call."""
    ids = []
    for i in range(EVENTS_PER_PHASE):
        started = time.perf_counter()
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
        call_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        http_id = client.record_fields(
            "http_request", {"method": "GET", "endpoint": f"/{zone}/{{id}}", "status": 200, "duration": 0.001 * i}
        )
        call_seconds.append(time.perf_counter() - started)
        assert event_id is not None
        assert http_id is not None
        ids += [event_id, http_id]
    return ids


def spooled_at_least(client: Client, n: int) -> bool:
    return client.stats()["spooled"] >= n


def stored_count(engine: Engine, ids: list[uuid.UUID]) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(MetricEvent).where(MetricEvent.event_id.in_(ids))
        return int(connection.execute(query).scalar_one())


def test_every_event_survives_a_stopped_paused_and_silent_broker_exactly_once(
    make_client: ClientFactory,
    breakable_redis: BreakableRedis,
    start_worker: WorkerFactory,
    pg_engine: Engine,
    unique: str,
) -> None:
    """Calls return within their bound in every state; after the broker returns, each event is stored once."""
    client = make_client(broker_url=breakable_redis.url, send_timeout_ms=300, retry_interval_ms=200)
    bound = client.settings.timeout_ms / 1000
    calls: list[float] = []
    ids: list[uuid.UUID] = []

    ids += record_phase(client, unique, "up", calls)
    assert client.flush(timeout=30)
    assert client.stats()["spooled"] == 0

    breakable_redis.stop()  # refused
    ids += record_phase(client, unique, "refused", calls)
    wait_until(lambda: spooled_at_least(client, EVENTS_PER_PHASE), timeout=30, what="events spooled (refused)")
    breakable_redis.start()
    wait_until(lambda: client.stats()["spool_events"] == 0, timeout=60, what="the spool drained after restart")

    breakable_redis.cli("CLIENT", "PAUSE", "600000", "WRITE")  # publishing hangs
    spooled_before = client.stats()["spooled"]
    ids += record_phase(client, unique, "paused", calls)
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
        ids += record_phase(client, unique, "silent", calls)
        wait_until(
            lambda: spooled_at_least(client, spooled_before + EVENTS_PER_PHASE),
            timeout=30,
            what="events spooled (silent)",
        )
    breakable_redis.start()
    wait_until(lambda: client.stats()["spool_events"] == 0, timeout=60, what="the spool drained after the silence")
    assert client.flush(timeout=30)

    assert max(calls) < bound, f"slowest call {max(calls) * 1000:.1f} ms, bound {bound * 1000:.0f} ms"
    stats = client.stats()
    assert stats["invalid"] == stats["dropped_queue_full"] == stats["dropped_spool_full"] == 0
    assert stats["sent"] >= len(ids)  # a message resent after a timeout may reach the broker twice

    worker = start_worker(BROKER_URL=breakable_redis.url)
    wait_until(lambda: stored_count(pg_engine, ids) == len(ids), timeout=120, what="every event stored")
    assert stored_count(pg_engine, ids) == len(ids) == 8 * EVENTS_PER_PHASE
    wait_until(lambda: breakable_redis.queue_length() == 0, timeout=60, what="the queue consumed")

    def counted() -> float:
        return total(worker.scrape(), "panic_requests_total", zone=unique)

    wait_until(lambda: counted() == 4 * EVENTS_PER_PHASE, timeout=60, what="every panic request counted")
    samples = worker.scrape()
    assert total(samples, "panic_requests_total", zone=unique) == 4 * EVENTS_PER_PHASE
    assert total(samples, "http_requests_total", endpoint=f"/{unique}/{{id}}") == 4 * EVENTS_PER_PHASE
