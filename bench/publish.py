"""What recording a metric costs the web request: the client against plain `.delay()`.

Part 1, one call's latency (p50, p99, max) with the broker up, refused
(stopped), paused (CLIENT PAUSE WRITE) and silent (a TCP listener that
accepts and never answers), calls back to back: an HTTP request (what the
middleware records per web request, batched) and a panic request (a
low-rate kind, one message each unless a burst). Calls over 1 ms are
counted, with how many overlapped a garbage collection. Plain `.delay()`
runs in a thread the bench abandons after --cutoff seconds: a hang is
printed as `>= cutoff`.
Goals: the client's p99 <= 100 us in every state, its max below its bound
(PANIC_METRICS_TIMEOUT_MS, 100 ms).

Part 2, HTTP requests carried end to end (stored in PostgreSQL and counted on
/metrics by a real worker, prefork with 2 children): through the client
(batched into record_events) versus one `.delay()` message per request.
Goal: >= 20x, with broker messages per 1,000 requests.

    .venv/bin/python bench/publish.py [--calls 20000] [--requests 20000] [--single 2000]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RUN_DIR = Path(tempfile.mkdtemp(prefix="panic-metrics-bench-publish-"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(RUN_DIR / "publisher")
(RUN_DIR / "publisher").mkdir()

from tests.support.services import PostgresDatabase, RedisServer, free_port, silent_listener, wait_until

REDIS = RedisServer(RUN_DIR / "redis", port=free_port())
DATABASE = PostgresDatabase()
os.environ["BROKER_URL"] = REDIS.url
os.environ["DATABASE_URL"] = DATABASE.url

import redis
from sqlalchemy import create_engine, func, select

from app.db.models import MetricEvent
from panic_metrics_client import Client, ClientSettings
from panic_metrics_client.messages import event_json
from panic_metrics_client.parsing import parse_event
from tests.support.db import migrate
from tests.support.worker import Worker, total

PANIC = {"service_type": "security", "status": "accepted", "zone": "bench", "firm_id": "firm-1", "response_time": 9.5}
HTTP = {"method": "GET", "endpoint": "/api/panics/{id}", "status": 200, "duration": 0.012}
# What the middleware records once per web request (batched), and a low-rate kind (one message each).
CALLS = {"http_request": HTTP, "panic_request": PANIC}


class GcWatch:
    """Garbage collections (start, end) while it is installed: a long call that overlaps one is the GC's."""

    def __init__(self) -> None:
        self.spans: list[tuple[float, float]] = []
        self._started = 0.0

    def __call__(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.spans.append((self._started, time.perf_counter()))

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self)

    def overlapping(self, started: float, seconds: float) -> bool:
        return any(start < started + seconds and end > started for start, end in self.spans)


def percentiles(seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1e6:9.1f} us   p99 {p99 * 1e6:9.1f} us   max {ordered[-1] * 1e6:11.1f} us   (n={len(ordered)})"


def validate_only(kind: str, payload: dict[str, Any]) -> None:
    """The baseline: the same validation and serialisation, no client and no sender thread."""
    event_json(parse_event(kind, payload))


def time_client(client: Client | None, kind: str, calls: int) -> tuple[list[float], str]:
    """Seconds per call through the client (validate + hand over), and what the calls over 1 ms overlapped."""
    timings = []
    starts = []
    fields = CALLS[kind]
    call = validate_only if client is None else client.record_fields
    with GcWatch() as watch:
        for i in range(calls):
            payload = {**fields, "duration" if kind == "http_request" else "response_time": (i % 600) / 1000}
            started = time.perf_counter()
            call(kind, payload)
            timings.append(time.perf_counter() - started)
            starts.append(started)
    slow = [(s, t) for s, t in zip(starts, timings, strict=True) if t > 1e-3]
    in_gc = sum(1 for s, t in slow if watch.overlapping(s, t))
    return timings, f"over 1 ms: {len(slow)} ({in_gc} in a GC; {len(watch.spans)} GCs)"


def _delay_once(task: Any, outcome: list[BaseException | None]) -> None:
    try:
        task.delay(**PANIC)
        outcome.append(None)
    except Exception as exc:  # noqa: BLE001 - what a web request would see raised into it
        outcome.append(exc)


def time_delay(task: Any, calls: int, cutoff: float) -> tuple[list[float], int]:
    """Seconds per plain `.delay()`, each in a thread abandoned after `cutoff`; also how many hung or raised."""
    timings: list[float] = []
    failures = 0
    for _ in range(calls):
        outcome: list[BaseException | None] = []
        started = time.perf_counter()
        thread = threading.Thread(target=_delay_once, args=(task, outcome), daemon=True)
        thread.start()
        thread.join(cutoff)
        timings.append(time.perf_counter() - started)
        if not outcome or outcome[0] is not None:
            failures += 1
            if len(timings) >= 3:
                break  # hangs or errors: three of them tell the story
    return timings, failures


def latency(args: argparse.Namespace) -> None:
    from workers.tasks.events import record_panic_request_metrics

    print(f"Part 1: one call, {args.calls} client calls per state; plain .delay() cut off at {args.cutoff}s")
    for kind in CALLS:
        # What this machine does to a ~10 us Python call with no client at all: the floor for p99 and max.
        time_client(None, kind, 1000)
        timings, slow = time_client(None, kind, args.calls)
        label = f"validate {kind.split('_')[0]}"
        print(f"  {'baseline':8s} {label:14s} {percentiles(timings)}   (no client, no sender thread)   {slow}")
    states: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("up", lambda: None, lambda: None),
        ("refused", REDIS.stop, REDIS.start),
        ("paused", lambda: pause(True), lambda: pause(False)),
    ]
    for state, enter, leave in states:
        measure(state, enter, leave, args, record_panic_request_metrics)
    listener = silent_listener(REDIS.port)
    measure(
        "silent",
        lambda: (REDIS.stop(), listener.__enter__()),
        lambda: (listener.__exit__(None, None, None), REDIS.start()),
        args,
        record_panic_request_metrics,
    )


def pause(on: bool) -> None:
    with redis.Redis.from_url(REDIS.url) as connection:
        if on:
            connection.execute_command("CLIENT", "PAUSE", "600000", "WRITE")
        else:
            connection.execute_command("CLIENT", "UNPAUSE")


def measure(
    state: str, enter: Callable[[], Any], leave: Callable[[], Any], args: argparse.Namespace, task: Any
) -> None:
    settings = ClientSettings(
        broker_url=REDIS.url, spool_dir=RUN_DIR / f"spool-{state}", queue_size=max(10_000, 2 * (args.calls + 1000) + 10)
    )
    client = Client(settings, metrics=False)
    client.start()
    client.flush(10)
    enter()
    results = {}
    try:
        for kind in CALLS:
            time_client(client, kind, 1000)  # warm-up: first validations, the sender noticing the state
            results[kind] = time_client(client, kind, args.calls)
        stats = client.stats()
        delays, failures = time_delay(task, args.delay_calls if state == "up" else 3, args.cutoff)
    finally:
        leave()
    client.flush(30)
    client.close(5)
    bound = settings.timeout_ms / 1000
    for kind, (timings, slow) in results.items():
        label = f"client {kind.split('_')[0]}"
        print(f"  {state:8s} {label:14s} {percentiles(timings)}   max < bound: {max(timings) < bound}   {slow}")
    print(
        f"  {state:8s} {'':14s} sent {stats['sent']}, spooled {stats['spooled']}, dropped {stats['dropped_queue_full']}"
    )
    hung = sum(1 for d in delays if d >= args.cutoff)
    note = f"   hung >= {args.cutoff}s: {hung}, raised: {failures - hung}" if failures else ""
    print(f"  {state:8s} {'plain .delay()':14s} {percentiles(delays)}{note}")


def stored(engine: Any, endpoint: str) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(MetricEvent).where(MetricEvent.endpoint == endpoint)
        return int(connection.execute(query).scalar_one())


def carried_all(engine: Any, worker: Worker, endpoint: str, n: int) -> bool:
    """All `n` requests of `endpoint` stored and counted on the worker's /metrics."""
    return stored(engine, endpoint) >= n and total(worker.scrape(), "http_requests_total", endpoint=endpoint) >= n


def carried(args: argparse.Namespace, engine: Any) -> None:
    from workers.tasks.events import record_http_request_metrics

    print("Part 2: HTTP requests stored and counted by a real worker (prefork, 2 children)")
    worker = Worker(
        {"BROKER_URL": REDIS.url, "DATABASE_URL": DATABASE.url, "WORKER_MAX_TASKS_PER_CHILD": "0"}, RUN_DIR / "worker"
    )
    worker.start()
    try:
        # Baseline: one message per request, the seed's way.
        endpoint = "/bench/single/{id}"
        started = time.perf_counter()
        for _ in range(args.single):
            record_http_request_metrics.delay(method="GET", endpoint=endpoint, status=200, duration=0.012)
        wait_until(
            lambda: carried_all(engine, worker, endpoint, args.single),
            timeout=900,
            what="single messages stored and counted",
            interval=0.5,
        )
        single_rate = args.single / (time.perf_counter() - started)

        client = Client(
            ClientSettings(broker_url=REDIS.url, spool_dir=RUN_DIR / "spool-carried", queue_size=args.requests + 10),
            metrics=False,
        )
        client.start()
        client.flush(10)
        endpoint = "/bench/client/{id}"
        started = time.perf_counter()
        for _ in range(args.requests):
            client.record_fields(
                "http_request", {"method": "GET", "endpoint": endpoint, "status": 200, "duration": 0.012}
            )
        client.flush(60)
        messages = client.counts["sent"]
        wait_until(
            lambda: carried_all(engine, worker, endpoint, args.requests),
            timeout=900,
            what="client requests stored and counted",
            interval=0.5,
        )
        client_rate = args.requests / (time.perf_counter() - started)
        batches = -(-args.requests // client.settings.batch_size)
        client.close(5)
        per_thousand = 1000 * batches / args.requests
        print(f"  one message each  {single_rate:9.0f} requests/s   messages per 1,000 requests: 1000")
        print(f"  through client    {client_rate:9.0f} requests/s   messages per 1,000 requests: {per_thousand:.1f}")
        print(f"  stored exactly once: {stored(engine, endpoint) == args.requests}   ({messages} events sent)")
        print(f"  ratio             {client_rate / single_rate:9.1f}x   (goal >= 20x)")
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000, help="client calls timed per broker state")
    parser.add_argument("--delay-calls", type=int, default=2_000, help="plain .delay() calls timed with the broker up")
    parser.add_argument("--cutoff", type=float, default=3.0, help="seconds after which a .delay() counts as hung")
    parser.add_argument("--requests", type=int, default=20_000, help="HTTP requests through the client")
    parser.add_argument("--single", type=int, default=2_000, help="HTTP requests as one message each")
    parser.add_argument("--only", choices=("latency", "carried"), help="run one part (the figures need both)")
    args = parser.parse_args()
    REDIS.start()
    DATABASE.create()
    engine = create_engine(DATABASE.url)
    try:
        migrate(engine)
        if args.only != "carried":
            latency(args)
        with redis.Redis.from_url(REDIS.url) as connection:
            connection.delete("events")  # part 1's messages are not part 2's
        if args.only != "latency":
            carried(args, engine)
    finally:
        engine.dispose()
        REDIS.stop()
        DATABASE.drop()


if __name__ == "__main__":
    main()
