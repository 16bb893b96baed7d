"""Faults of delivery on Redis: prefetched messages of a dead worker, a task past the visibility
timeout, a poison message, a task past its hard time limit (one event from many producers and a
pickle payload are in test_shared_workers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.conftest import VISIBILITY_TIMEOUT, Stream, WorkerStarter
from tests.faults.fault_tasks import INCLUDE
from tests.support.services import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_worker_killed_with_prefetched_messages_second_worker_stores_all_once(
    redis_stream: tuple[dict[str, str], Stream], start_fault_worker: WorkerStarter
) -> None:
    """2. The whole worker SIGKILLed holding prefetched messages: a second worker gets them after the timeout."""
    env, stream = redis_stream
    # The first worker reserves four messages per child ahead (the default):
    # the prefetched messages its death must not lose.
    first = start_fault_worker({**env, "WORKER_PREFETCH_MULTIPLIER": "4"})
    stream.publish_many(150)
    stream.wait_stored(20, timeout=60, what="some events stored")
    first.kill()
    assert stream.stored() < len(stream.acknowledged), "the worker finished before it could be killed"
    start_fault_worker(env)
    stream.assert_complete()


def test_task_past_visibility_timeout_is_delivered_twice_and_stored_once(
    redis_stream: tuple[dict[str, str], Stream], start_fault_worker: WorkerStarter, tmp_path: Path
) -> None:
    """3. A task running past the visibility timeout: Redis delivers it again meanwhile; stored once."""
    env, stream = redis_stream
    deliveries = tmp_path / "deliveries.log"
    start_fault_worker({**env, "FAULT_DELIVERY_LOG": str(deliveries)}, extra=INCLUDE)
    events = [stream.event() for _ in range(3)]
    result = stream.app.send_task(
        "tests.faults.slow_record_events", args=[events], kwargs={"seconds": VISIBILITY_TIMEOUT + 4}, queue="events"
    )
    stream.acknowledged.update(str(event["event_id"]) for event in events)

    def delivered_twice() -> bool:
        lines = deliveries.read_text().splitlines() if deliveries.exists() else []
        return sum(line.startswith(result.id) for line in lines) >= 2

    wait_until(delivered_twice, timeout=60, what="a second delivery of the running task")
    stream.assert_complete()


def test_poison_message_is_quarantined_after_bounded_deliveries_while_others_are_served(
    redis_stream: tuple[dict[str, str], Stream], start_fault_worker: WorkerStarter, tmp_path: Path
) -> None:
    """9. A message that kills its child every time: at most TASK_MAX_DELIVERIES runs, then quarantined."""
    env, stream = redis_stream
    deliveries = tmp_path / "deliveries.log"
    quarantine_dir = tmp_path / "quarantine"
    start_fault_worker(
        {
            **env,
            "FAULT_DELIVERY_LOG": str(deliveries),
            "QUARANTINE_DIR": str(quarantine_dir),
            "TASK_MAX_DELIVERIES": "3",
        },
        extra=INCLUDE,
    )
    poison = stream.event()
    result = stream.app.send_task("tests.faults.poison_record_events", args=[[poison]], queue="events")
    stream.publish_many(40)  # served meanwhile

    def quarantined() -> list[dict[str, object]]:
        return [
            json.loads(line)
            for path in quarantine_dir.glob("quarantine-*.jsonl")
            for line in path.read_text().splitlines()
        ]

    wait_until(lambda: bool(quarantined()), timeout=90, what="the poison message quarantined")
    (record,) = quarantined()
    assert record["task_id"] == result.id
    assert record["reason"] == "redelivery_cap"
    assert record["payloads"] == [poison]
    # Three runs, each killed; the fourth delivery is set aside without running.
    assert sum(line.startswith(result.id) for line in deliveries.read_text().splitlines()) == 3
    stream.assert_complete()
    assert str(poison["event_id"]) not in stream.stored_ids()


def test_task_past_hard_time_limit_is_killed_and_its_message_quarantined(
    redis_stream: tuple[dict[str, str], Stream], start_fault_worker: WorkerStarter, tmp_path: Path
) -> None:
    """A task that ignores its soft limit is killed at the hard one; its arguments are kept in quarantine."""
    env, stream = redis_stream
    quarantine_dir = tmp_path / "quarantine"
    limits = {
        "TASK_SOFT_TIME_LIMIT_SECONDS": "1",
        "TASK_TIME_LIMIT_SECONDS": "2",
        "QUARANTINE_DIR": str(quarantine_dir),
    }
    start_fault_worker({**env, **limits}, extra=INCLUDE)
    stuck = [stream.event()]
    result = stream.app.send_task("tests.faults.stubborn_record_events", args=[stuck, 60], queue="events")
    stream.publish_many(10)

    def quarantined() -> list[dict[str, object]]:
        return [json.loads(line) for path in quarantine_dir.glob("*.jsonl") for line in path.read_text().splitlines()]

    def stuck_record() -> list[dict[str, object]]:
        return [record for record in quarantined() if record["task_id"] == result.id]

    wait_until(lambda: bool(stuck_record()), timeout=60, what="the stuck message quarantined")
    (record,) = stuck_record()
    assert record["reason"] == "hard_time_limit"
    assert record["payloads"] == [{"task": "tests.faults.stubborn_record_events", "args": [stuck, 60], "kwargs": {}}]
    stream.assert_complete()
