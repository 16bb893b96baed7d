"""Faults: a worker SIGKILLed mid-stream loses nothing and counts nothing twice."""

from __future__ import annotations

import os
import signal
import time

import pytest
from sqlalchemy import Engine, func, select

from app.db.models import MetricEvent
from tests.integration.conftest import WorkerFactory
from tests.support.services import wait_until
from tests.support.worker import total, value
from workers.tasks import events as tasks

pytestmark = pytest.mark.integration

BATCHES = 400
PER_BATCH = 50
VISIBILITY_TIMEOUT = 3
# The worker refuses a visibility timeout not above its longest retry countdown.
SHORT_TIMEOUTS = {
    "BROKER_VISIBILITY_TIMEOUT_SECONDS": str(VISIBILITY_TIMEOUT),
    "TASK_RETRY_BACKOFF_MAX_SECONDS": str(VISIBILITY_TIMEOUT - 1),
}


def stored_in_zone(engine: Engine, zone: str) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(MetricEvent).where(MetricEvent.zone == zone)
        return int(connection.execute(query).scalar_one())


def test_worker_killed_mid_stream_then_restarted_stores_everything_once(
    start_worker: WorkerFactory, pg_engine: Engine, unique: str
) -> None:
    """SIGKILL of the whole worker mid-stream: after a restart every event is stored once and counted once."""
    # A short visibility timeout so the killed worker's unacknowledged messages
    # come back within the test rather than in an hour.
    first = start_worker(**SHORT_TIMEOUTS)
    for batch in range(BATCHES):
        tasks.record_events.delay(
            [
                {
                    "kind": "panic_request",
                    "event_id": f"00000000-0000-4000-8000-{batch * PER_BATCH + i:012d}".replace(
                        "00000000", unique[1:9]
                    ),
                    "service_type": "security",
                    "status": "requested",
                    "zone": unique,
                }
                for i in range(PER_BATCH)
            ]
        )
    wait_until(lambda: stored_in_zone(pg_engine, unique) >= 5 * PER_BATCH, timeout=60, what="some batches stored")
    first.kill()
    stored_before_restart = stored_in_zone(pg_engine, unique)
    assert stored_before_restart < BATCHES * PER_BATCH, "the worker finished before it could be killed"

    # Redis hands the killed worker's unacknowledged messages to the next worker
    # that starts once their visibility timeout has passed: a restart after an outage.
    killed_at = time.monotonic()
    wait_until(lambda: time.monotonic() - killed_at > VISIBILITY_TIMEOUT + 0.5, timeout=10, what="visibility timeout")
    second = start_worker(**SHORT_TIMEOUTS)
    # The new worker restores them when it starts or, when the start-up scan
    # misses them (a dead worker's restore mutex, the scan throttle), at its
    # periodic scan: with kombu's defaults that takes up to about two minutes.
    wait_until(lambda: stored_in_zone(pg_engine, unique) == BATCHES * PER_BATCH, timeout=300, what="every event stored")
    wait_until(
        lambda: (
            total(second.scrape(), "panic_requests_total", zone=unique) == BATCHES * PER_BATCH - stored_before_restart
        ),
        timeout=30,
        what="the restarted worker to count exactly what it stored",
    )
    assert stored_in_zone(pg_engine, unique) == BATCHES * PER_BATCH


def test_pool_child_killed_mid_batch_is_redelivered_stored_once_and_never_counted_twice(
    start_worker: WorkerFactory, pg_engine: Engine, unique: str
) -> None:
    """SIGKILL of pool children mid-batch: messages redelivered, every event stored once and counted exactly once.

    A child killed between its COMMIT and its increments leaves a pending
    record; the endpoint's housekeeper settles it before merging the child's
    files, so the counters end exactly at the rows stored.
    """
    worker = start_worker()
    for _ in range(BATCHES):
        tasks.record_events.delay(
            [
                {"kind": "panic_request", "service_type": "fire", "status": "requested", "zone": unique}
                for _ in range(PER_BATCH)
            ]
        )
    wait_until(lambda: stored_in_zone(pg_engine, unique) >= 5 * PER_BATCH, timeout=60, what="some batches stored")
    killed = worker.children()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert stored_in_zone(pg_engine, unique) < BATCHES * PER_BATCH, "the worker finished before it could be killed"

    wait_until(lambda: stored_in_zone(pg_engine, unique) == BATCHES * PER_BATCH, timeout=120, what="every event stored")
    wait_until(
        lambda: total(worker.scrape(), "panic_requests_total", zone=unique) == BATCHES * PER_BATCH,
        timeout=60,
        what="every stored event counted (pending records of killed children settled)",
    )
    samples = worker.scrape()
    assert total(samples, "panic_requests_total", zone=unique) == stored_in_zone(pg_engine, unique)
    assert value(samples, "metrics_events_stored_total", kind="panic_request") == BATCHES * PER_BATCH
