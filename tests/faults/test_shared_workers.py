"""Faults that neither kill nor reconfigure a worker, run on two workers shared by this module:
one event from many producers, a pickle payload.

A module of their own: the shared workers consume the run's `events` queue
until the module ends, and would take other faults' messages (a poison task
they do not know, say) if they outlived these tests.
"""

from __future__ import annotations

import os
import pickle
import threading
import uuid
from pathlib import Path

import pytest
from kombu import Connection, Producer

from tests.faults.conftest import Stream
from tests.support.services import wait_until
from tests.support.worker import Worker, total

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_same_event_from_many_producers_to_many_workers_is_stored_and_counted_once(
    redis_stream: tuple[dict[str, str], Stream], shared_redis_workers: list[Worker]
) -> None:
    """8. The same event_ids sent at once by four producers to two workers: each stored once, counted once."""
    _, stream = redis_stream
    workers = shared_redis_workers
    events = [stream.event() for _ in range(200)]

    def produce(order: int) -> None:
        batch = events[order:] + events[:order]  # each producer in its own order
        for start in range(0, len(batch), 5):
            stream.publish(batch[start : start + 5])

    producers = [threading.Thread(target=produce, args=(order,)) for order in (0, 50, 100, 150)]
    for producer in producers:
        producer.start()
    for producer in producers:
        producer.join()
    stream.assert_complete()

    def counted() -> float:
        return sum(total(worker.scrape(), "panic_requests_total", zone=stream.zone) for worker in workers)

    # The fresh event of assert_complete makes 201; every one counted by exactly one worker.
    wait_until(lambda: counted() >= len(events) + 1, timeout=30, what="every event counted")
    assert counted() == len(events) + 1


class _Canary:
    """Unpickling this creates the canary file: what a pickle payload could do on a worker."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_pickle_message_is_refused_without_side_effect(
    redis_stream: tuple[dict[str, str], Stream], shared_redis_workers: list[Worker], tmp_path: Path
) -> None:
    """10. A pickle-serialised task message in the queue: refused, the canary file never appears."""
    env, stream = redis_stream
    canary = tmp_path / "canary"
    task_id = str(uuid.uuid4())
    body = pickle.dumps(((_Canary(canary),), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}))
    with Connection(env["BROKER_URL"]) as connection:
        Producer(connection).publish(
            body,
            routing_key="events",
            exchange="events",
            content_type="application/x-python-serialize",
            content_encoding="binary",
            headers={"lang": "py", "task": "panic_metrics.events.record_events", "id": task_id, "root_id": task_id},
        )
    # Either shared worker may take it; nothing else in this module sends one.
    wait_until(
        lambda: any("disallowed" in worker.log().lower() for worker in shared_redis_workers),
        timeout=30,
        what="a worker refusing the pickle message",
    )
    stream.assert_complete()
    assert not canary.exists()
