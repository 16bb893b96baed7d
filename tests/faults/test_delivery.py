"""Faults of delivery on Redis: prefetched messages of a dead worker, a worker killed on the reply
that hands it a message, a task past the visibility timeout, a poison message, a task past its hard
time limit (one event from many producers and a pickle payload are in test_shared_workers.py)."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from app.metrics.multiproc import collect_registry, compact
from app.store import attempt_committed
from tests.faults.conftest import VISIBILITY_TIMEOUT, Stream, WorkerStarter
from tests.faults.fault_tasks import INCLUDE
from tests.support.redisproxy import ReplyKillingProxy
from tests.support.services import PostgresDatabase, RedisServer, wait_until
from tests.support.worker import Worker, value

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


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in {"Z", "X"}  # a zombie has run its last instruction


def kill_whole_worker(worker: Worker) -> None:
    """SIGKILL a worker's main process and every pool child; return once none of them can run again.

    The main process is stopped first, so it cannot fork a replacement child
    between the listing of its children and their kill.
    """
    assert worker.process is not None
    os.kill(worker.process.pid, signal.SIGSTOP)
    pids = [worker.process.pid, *worker.children()]
    worker.kill()  # children, then the main process, reaped
    wait_until(lambda: all(_dead(pid) for pid in pids), timeout=10, what="every process of the worker dead")


def stored_counted(directory: Path, engine: Engine) -> float:
    """`metrics_events_stored_total{kind="panic_request"}` of a dead worker's directory, its pending counts settled."""

    def resolve(token: Any, _rows: int) -> bool:
        with Session(engine) as session:
            return attempt_committed(session, token)

    assert compact(directory, resolve=resolve).unresolved_pids == ()
    registry = collect_registry(directory)
    return registry.get_sample_value("metrics_events_stored_total", {"kind": "panic_request"}) or 0.0


def messages_holding(client: redis.Redis, marker: bytes) -> tuple[int, int]:
    """How many queued messages and how many unacknowledged records carry `marker`."""
    lists = [key for key in client.scan_iter() if client.type(key) == b"list"]
    queued = sum(marker in raw for key in lists for raw in client.lrange(key, 0, -1))
    return queued, sum(marker in raw for raw in client.hvals("unacked"))


def publish_around_victim(stream: Stream, around: int) -> tuple[str, list[dict[str, object]]]:
    """`around` messages, the victim (5 events, a task id of its own), `around` more: its id and its events."""
    stream.publish_many(around)
    victim = f"claim-victim-{uuid.uuid4()}"
    victim_events = [stream.event() for _ in range(5)]
    stream.app.send_task("panic_metrics.events.record_events", args=[victim_events], queue="events", task_id=victim)
    stream.acknowledged.update(str(event["event_id"]) for event in victim_events)
    stream.publish_many(around)
    return victim, victim_events


def test_worker_killed_on_the_reply_that_claims_a_message_loses_nothing(
    private_redis: Callable[..., RedisServer],
    pg_database: PostgresDatabase,
    pg_engine: Engine,
    start_fault_worker: WorkerStarter,
) -> None:
    """The whole worker SIGKILLed on the reply that hands it a message: stored once and counted once by the next.

    The worker reads its broker through a proxy armed on the victim's task id
    (plain text in the message headers): Redis has executed the claim, the
    proxy holds its reply back, kills the worker and waits for it to die.
    kombu's own transport loses the message there (BRPOP, then the unacked
    record; kombu #305, tests/faults/test_claim_window.py); ours recorded it
    in the step that took it, so the visibility timeout hands it back.
    """
    server = private_redis()
    env = {"BROKER_URL": server.url, "DATABASE_URL": pg_database.url}
    stream = Stream(env, pg_engine)
    # Everything is queued before the worker starts, so the victim is taken by a
    # claim (a wait, BLMOVE, only follows a claim that found the queues empty,
    # and it returns a message it leaves queued), with messages taken before it
    # (stored, perhaps mid-task at the kill) and after it (never taken).
    victim, victim_events = publish_around_victim(stream, 6)

    with ReplyKillingProxy("127.0.0.1", server.port) as proxy:
        first: list[Worker] = []
        proxy.arm(victim.encode(), lambda: kill_whole_worker(first[0]))
        # Only the broker goes through the proxy; the database is reached directly.
        first.append(start_fault_worker({**env, "BROKER_URL": proxy.url()}, wait=False))
        wait_until(proxy.fired.is_set, timeout=120, what=f"the claim of the victim (log: {first[0].log_path})")
    assert proxy.fired.is_set()
    assert proxy.error is None, proxy.error
    assert first[0].process is None, "the worker was not killed"
    # Redis had let go of the victim: not queued any more, only recorded as unacknowledged.
    assert messages_holding(redis.Redis.from_url(server.url), victim.encode()) == (0, 1)
    counted_by_first = stored_counted(first[0].multiproc_dir, pg_engine)
    victim_ids = {str(event["event_id"]) for event in victim_events}
    assert not victim_ids & set(stream.stored_ids()), "the victim was stored although it never reached the worker"

    second = start_fault_worker(env)
    stream.assert_complete()
    assert victim_ids <= set(stream.stored_ids())
    wait_until(
        lambda: (
            counted_by_first + value(second.scrape(), "metrics_events_stored_total", kind="panic_request")
            == len(stream.acknowledged)
        ),
        timeout=60,
        what="every stored event counted once between the two workers",
    )
    assert stream.stored() == len(stream.acknowledged)


def test_link_cut_on_the_reply_that_claims_a_message_the_worker_reconnects_and_stores_it_once(
    private_redis: Callable[..., RedisServer],
    pg_database: PostgresDatabase,
    pg_engine: Engine,
    start_fault_worker: WorkerStarter,
) -> None:
    """The broker link cut on the reply that hands the worker a message: the same worker gets it back after the timeout.

    The worker lives on; only the reply is lost (a network cut, a connection
    dropped with the reply still in its socket). It reconnects through the
    proxy, and its own restore scan hands the claimed message back.
    """
    server = private_redis()
    env = {"BROKER_URL": server.url, "DATABASE_URL": pg_database.url}
    stream = Stream(env, pg_engine)
    victim, victim_events = publish_around_victim(stream, 3)

    with ReplyKillingProxy("127.0.0.1", server.port) as proxy:
        # No kill: the link alone is cut. What Redis holds is read while the
        # reply is held back, before the worker can hear of anything.
        client = redis.Redis.from_url(server.url)
        holding: list[tuple[int, int]] = []
        proxy.arm(victim.encode(), lambda: holding.append(messages_holding(client, victim.encode())))
        worker = start_fault_worker({**env, "BROKER_URL": proxy.url()}, wait=False)
        wait_until(proxy.fired.is_set, timeout=120, what=f"the claim of the victim (log: {worker.log_path})")
        assert proxy.error is None, proxy.error
        # (queued, recorded as unacknowledged): out of the queue, and recorded in the same step.
        assert holding == [(0, 1)], "the victim was not claimed (still queued, or taken without a record: lost)"
        worker.wait_ready()
        stream.assert_complete()
        assert {str(event["event_id"]) for event in victim_events} <= set(stream.stored_ids())
        wait_until(
            lambda: value(worker.scrape(), "metrics_events_stored_total", kind="panic_request") == stream.stored(),
            timeout=60,
            what="every stored event counted once",
        )
    assert worker.process is not None
    assert worker.process.poll() is None, "the worker died of the cut"
    assert stream.stored() == len(stream.acknowledged)


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
