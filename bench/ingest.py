"""Ingest throughput on real Redis and PostgreSQL, against the database's own floor and a bare no-op task.

First, on the same database and with the same rows, the floor: the worker's
own statement (`INSERT ... SELECT FROM unnest ... ON CONFLICT DO NOTHING
RETURNING`, app.store) with nothing else, 1 row per transaction and 100 rows
per transaction on one connection; beside it two other ways to the same
rows (psycopg's pipeline mode; COPY into a staging table then INSERT ...
SELECT ... ON CONFLICT), each a second floor. Then `ingest()` in this
process, no broker. Then the queue is filled and one prefork worker (2
children) consumes it, timed until every message is processed and, for
event tasks, every event is stored and counted on /metrics. Prints events/s
and each scenario's ratio to the floor of its transaction size and to the
no-op task, all measured in this run.

`--profile` also prints a message's time by stage (app.ingest tells a clock
each stage's name as it ends), and what Celery adds around it, read from
the worker's own task-duration histogram.

    .venv/bin/python bench/ingest.py [--messages 4000] [--batches 400] [--profile]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RUN_DIR = Path(tempfile.mkdtemp(prefix="panic-metrics-bench-"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(RUN_DIR / "publisher")
(RUN_DIR / "publisher").mkdir()

from tests.support.services import PostgresDatabase, RedisServer, free_port, wait_until

REDIS = RedisServer(RUN_DIR / "redis", port=free_port())
DATABASE = PostgresDatabase()
os.environ["BROKER_URL"] = REDIS.url
os.environ["DATABASE_URL"] = DATABASE.url

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from app.ingest import ingest
from app.store import _COLUMNS, _PG_UNNEST_INSERT, event_row
from panic_metrics_client.parsing import parse_event
from tests.support.db import migrate
from tests.support.worker import Worker, total

#: Stages in the order a message meets them; app.ingest names them as they end.
STAGES = (
    ("pending_file", "pending-record file work (room check, write, unlink)"),
    ("resolve", "resolve earlier attempts"),
    ("validate", "decode and validation"),
    ("connect", "session and connection checkout (pre-ping)"),
    ("lock", "advisory lock alone (rejections only)"),
    ("insert", "insert (lock, unnest ... ON CONFLICT ... RETURNING)"),
    ("rejections", "rejections"),
    ("labels", "label admissions"),
    ("count", "counting (tally, targets, apply)"),
    ("commit", "commit"),
    ("close", "session close"),
)


def panic_payload(i: int, status: str) -> dict[str, Any]:
    """One panic request as the scenarios publish it."""
    return {
        "service_type": "security",
        "status": status,
        "firm_id": f"firm{i % 40}",
        "zone": f"zone{i % 25}",
        "response_time": float(i % 900),
    }


def unnest_arrays(payloads: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The parameters of app.store's statement for these payloads, as `insert_new` builds them (fresh ids)."""
    token = uuid.uuid4()
    events = sorted(
        (parse_event("panic_request", {**p, "event_id": str(uuid.uuid4())}) for p in payloads),
        key=lambda e: e.event_id,
    )
    rows = [event_row(e, published_at=datetime.now(UTC), stored_by=token) for e in events]
    return {name: [row[name] for row in rows] for name in _COLUMNS}


def floors(url: str, messages: list[list[dict[str, Any]]]) -> dict[str, float]:
    """Seconds for each way of storing `messages` (one transaction each, fresh ids) with nothing else."""
    statement = _PG_UNNEST_INSERT.compile(dialect=PGDialect_psycopg()).string  # the worker's own statement
    columns = ", ".join(_COLUMNS)
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as connection:

        def plain(transactions: list[dict[str, list[Any]]]) -> None:
            for arrays in transactions:
                connection.execute(statement, arrays).fetchall()
                connection.commit()

        def pipelined(transactions: list[dict[str, list[Any]]]) -> None:
            # BEGIN, INSERT and COMMIT leave in one round trip; the RETURNING rows are read after.
            for arrays in transactions:
                with connection.pipeline():
                    cursor = connection.execute(statement, arrays)
                    connection.commit()
                cursor.fetchall()

        def copied(transactions: list[dict[str, list[Any]]]) -> None:
            for arrays in transactions:
                with connection.cursor() as cursor:
                    with cursor.copy(f"COPY staging ({columns}) FROM STDIN") as copy:
                        for row in zip(*arrays.values(), strict=True):
                            copy.write_row(row)
                    cursor.execute(
                        f"INSERT INTO metric_events ({columns}) SELECT {columns} FROM staging "  # noqa: S608 - the model's columns
                        "ORDER BY event_id ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
                    ).fetchall()
                connection.commit()

        connection.execute("CREATE TEMP TABLE staging (LIKE metric_events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        connection.commit()
        ways: dict[str, Callable[[list[dict[str, list[Any]]]], None]] = {"statement": plain, "pipeline": pipelined}
        if len(messages[0]) > 1:
            ways["copy"] = copied
        seconds = dict.fromkeys(ways, 0.0)
        # Two halves, the ways interleaved within each: a loaded machine drifts.
        half = len(messages) // 2
        for part in (messages[:half], messages[half:]):
            for name, way in ways.items():
                transactions = [unnest_arrays(payloads) for payloads in part]  # built outside the clock
                started = time.perf_counter()
                way(transactions)
                seconds[name] += time.perf_counter() - started
    return seconds


class StageClock:
    """app.ingest's clock: adds the time since the last stage ended to the stage that just ended."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self.last
        self.last = now

    def start(self) -> None:
        self.last = time.perf_counter()


def in_process(messages: list[list[dict[str, Any]]], clock: StageClock) -> float:
    """Seconds for `ingest()` of each message in this process: no broker, no Celery."""
    started = time.perf_counter()
    for payloads in messages:
        clock.start()
        ingest(
            # As the tasks hand them over: a single event's kind is its task's, a batch's payloads carry theirs.
            [
                {**({} if len(payloads) == 1 else {"kind": "panic_request"}), **p, "event_id": str(uuid.uuid4())}
                for p in payloads
            ],
            kind="panic_request" if len(payloads) == 1 else None,
            published_at=datetime.now(UTC),
            clock=clock,
        )
    return time.perf_counter() - started


def drain(worker: Worker, app: object, done: callable, what: str) -> float:  # type: ignore[valid-type]
    """Let the worker consume the filled queue; seconds until `done()` holds."""
    started = time.perf_counter()
    app.control.add_consumer("events", destination=[worker.hostname], reply=True)  # type: ignore[attr-defined]
    # Poll gently: the scrape runs in the worker's main process, beside the consumer.
    wait_until(done, timeout=600, what=what, interval=0.5)
    elapsed = time.perf_counter() - started
    app.control.cancel_consumer("events", destination=[worker.hostname], reply=True)  # type: ignore[attr-defined]
    return elapsed


def main() -> None:  # noqa: PLR0915 - one run, scenario after scenario
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000, help="messages for the baseline and the single path")
    parser.add_argument("--batches", type=int, default=400, help="record_events messages of 100 events each")
    parser.add_argument("--profile", action="store_true", help="print a message's time by stage")
    args = parser.parse_args()
    n, events = args.messages, args.batches * 100
    singles = [[panic_payload(i, "accepted")] for i in range(n)]
    batches = [[panic_payload(i, "completed") for i in range(100)] for _ in range(args.batches)]

    REDIS.start()
    DATABASE.create()
    engine = create_engine(DATABASE.url)
    migrate(engine)
    engine.dispose()
    worker = Worker(
        {"BROKER_URL": REDIS.url, "DATABASE_URL": DATABASE.url, "WORKER_MAX_TASKS_PER_CHILD": "0"},
        RUN_DIR / "worker",
        extra=("--include", "bench.noop_task", "--without-heartbeat"),
    )
    # Consume nothing until a scenario's queue is full.
    worker.argv[worker.argv.index("events,scheduled")] = "idle"
    try:
        floor_single = floors(DATABASE.url, singles)
        floor_batch = floors(DATABASE.url, batches)
        single_clock, batch_clock = StageClock(), StageClock()
        local_single = in_process(singles, single_clock)
        local_batch = in_process(batches, batch_clock)

        worker.start()
        from bench.noop_task import noop
        from workers.celery_app import app
        from workers.tasks.events import record_events, record_panic_request_metrics

        for _ in range(n):
            noop.delay()
        base = drain(
            worker,
            app,
            lambda: total(worker.scrape(), "celery_task_duration_seconds_count", task="panic_metrics.bench.noop") >= n,
            "no-op tasks",
        )
        for payload in singles:
            record_panic_request_metrics.delay(**payload[0])
        single = drain(
            worker, app, lambda: total(worker.scrape(), "panic_requests_total", status="accepted") >= n, "singles"
        )
        for payloads in batches:
            record_events.delay([{"kind": "panic_request", **p} for p in payloads])
        batched = drain(
            worker, app, lambda: total(worker.scrape(), "panic_requests_total", status="completed") >= events, "batches"
        )
        samples = worker.scrape()
        run_ms = {}
        for task in (
            "panic_metrics.bench.noop",
            "panic_metrics.events.record_panic_request_metrics",
            "panic_metrics.events.record_events",
        ):
            runs = total(samples, "celery_task_duration_seconds_count", task=task)
            run_ms[task] = 1000 * total(samples, "celery_task_duration_seconds_sum", task=task) / runs
            print(f"mean task run time {task}: {run_ms[task]:.2f} ms")
    finally:
        worker.stop()
        DATABASE.drop()
        REDIS.stop()

    noop_rate = n / base
    print()
    print(f"{'scenario':<52} {'events':>7} {'seconds':>8} {'events/s':>9} {'vs floor':>9} {'vs no-op':>9}")
    rows: list[tuple[str, int, float, float | None]] = [
        ("no-op task (baseline), 2 children", n, base, None),
        *((f"floor 1 row/txn, {way}", n, secs, None) for way, secs in floor_single.items()),
        ("ingest() in process, 1 event/message", n, local_single, n / floor_single["statement"]),
        ("record_panic_request_metrics, 1 event/message", n, single, n / floor_single["statement"]),
        *((f"floor 100 rows/txn, {way}", events, secs, None) for way, secs in floor_batch.items()),
        ("ingest() in process, 100 events/message", events, local_batch, events / floor_batch["statement"]),
        ("record_events, 100 events/message", events, batched, events / floor_batch["statement"]),
    ]
    for name, count, seconds, floor_rate in rows:
        rate = count / seconds
        vs_floor = f"{rate / floor_rate:.2f}x" if floor_rate else ""
        print(f"{name:<52} {count:>7} {seconds:>8.2f} {rate:>9.0f} {vs_floor:>9} {rate / noop_rate:>8.2f}x")
    print("floors: one connection, nothing else; 'statement' is the worker's own, the others its alternatives")
    print("goals: single >= 0.7x the no-op task; batched >= 0.8x its floor")

    if args.profile:
        print()
        print("a message's time by stage, ms (ingest() in this process, then what the worker adds around it)")
        print(f"{'stage':<52} {'1 event':>9} {'100 events':>11}")
        for stage, label in STAGES:
            one, hundred = 1000 * single_clock.seconds[stage] / n, 1000 * batch_clock.seconds[stage] / args.batches
            print(f"{label:<52} {one:>9.3f} {hundred:>11.3f}")
        ingest_ms = (1000 * local_single / n, 1000 * local_batch / args.batches)
        print(f"{'ingest() in all':<52} {ingest_ms[0]:>9.3f} {ingest_ms[1]:>11.3f}")
        task_ms = (
            run_ms["panic_metrics.events.record_panic_request_metrics"],
            run_ms["panic_metrics.events.record_events"],
        )
        print(f"{'task body in the worker (its run-time histogram)':<52} {task_ms[0]:>9.3f} {task_ms[1]:>11.3f}")
        # Two children share the queue, so a message's wall time is 2 x the elapsed time per message.
        wall_ms = (2000 * single / n, 2000 * batched / args.batches)
        print(f"{'a message in the worker (2 x elapsed / messages)':<52} {wall_ms[0]:>9.3f} {wall_ms[1]:>11.3f}")
        noop_ms = 2000 * base / n
        celery_ms = (wall_ms[0] - task_ms[0], wall_ms[1] - task_ms[1])
        print(f"{'  of which Celery outside the task body':<52} {celery_ms[0]:>9.3f} {celery_ms[1]:>11.3f}")
        print(f"{'  the no-op task, for comparison':<52} {noop_ms:>9.3f}")


if __name__ == "__main__":
    main()
