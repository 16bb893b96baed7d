"""Ingest throughput on real Redis and PostgreSQL, against a bare no-op task on the same broker.

Fills the queue first, then lets one prefork worker (2 children) consume it
and times until every message is processed and, for event tasks, every event
is stored and counted on /metrics. Prints events/s and the ratio to the
baseline. Goals: single ≥ 0.5x, batched (100 per message) ≥ 10x.

    .venv/bin/python bench/ingest.py [--messages 4000] [--batches 400]
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

from sqlalchemy import create_engine

from tests.support.db import migrate
from tests.support.worker import Worker, total


def drain(worker: Worker, app: object, done: callable, what: str) -> float:  # type: ignore[valid-type]
    """Let the worker consume the filled queue; seconds until `done()` holds."""
    started = time.perf_counter()
    app.control.add_consumer("events", destination=[worker.hostname], reply=True)  # type: ignore[attr-defined]
    # Poll gently: the scrape runs in the worker's main process, beside the consumer.
    wait_until(done, timeout=600, what=what, interval=0.5)
    elapsed = time.perf_counter() - started
    app.control.cancel_consumer("events", destination=[worker.hostname], reply=True)  # type: ignore[attr-defined]
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=4000, help="messages for the baseline and the single path")
    parser.add_argument("--batches", type=int, default=400, help="record_events messages of 100 events each")
    args = parser.parse_args()

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
        worker.start()
        from bench.noop_task import noop
        from workers.celery_app import app
        from workers.tasks.events import record_events, record_panic_request_metrics

        n = args.messages
        for _ in range(n):
            noop.delay()
        base = drain(
            worker,
            app,
            lambda: total(worker.scrape(), "celery_task_duration_seconds_count", task="panic_metrics.bench.noop") >= n,
            "no-op tasks",
        )

        for i in range(n):
            record_panic_request_metrics.delay(
                service_type="security",
                status="accepted",
                firm_id=f"firm{i % 40}",
                zone=f"zone{i % 25}",
                response_time=float(i % 900),
            )
        single = drain(
            worker, app, lambda: total(worker.scrape(), "panic_requests_total", status="accepted") >= n, "single events"
        )

        batch = [
            {
                "kind": "panic_request",
                "service_type": "medical",
                "status": "completed",
                "zone": f"zone{i % 25}",
                "firm_id": f"firm{i % 40}",
                "response_time": float(i),
            }
            for i in range(100)
        ]
        for _ in range(args.batches):
            record_events.delay(batch)
        events = args.batches * 100
        batched = drain(
            worker, app, lambda: total(worker.scrape(), "panic_requests_total", status="completed") >= events, "batches"
        )
        samples = worker.scrape()
        for task in (
            "panic_metrics.bench.noop",
            "panic_metrics.events.record_panic_request_metrics",
            "panic_metrics.events.record_events",
        ):
            runs = total(samples, "celery_task_duration_seconds_count", task=task)
            busy = total(samples, "celery_task_duration_seconds_sum", task=task)
            print(f"mean task run time {task}: {1000 * busy / runs:.2f} ms")
    finally:
        worker.stop()
        DATABASE.drop()
        REDIS.stop()

    rows = [
        ("no-op task (baseline)", n, base, n / base),
        ("record_panic_request_metrics, 1 event/message", n, single, n / single),
        ("record_events, 100 events/message", events, batched, events / batched),
    ]
    baseline = rows[0][3]
    print(f"{'scenario':<50} {'events':>8} {'seconds':>8} {'events/s':>10} {'vs baseline':>12}")
    for name, count, seconds, rate in rows:
        print(f"{name:<50} {count:>8} {seconds:>8.2f} {rate:>10.0f} {rate / baseline:>11.2f}x")
    print("goals: single >= 0.5x, batched >= 10x")


if __name__ == "__main__":
    main()
