"""Scrape time and directory size as pool children recycle: stock vs compacted.

Forks real children the way Celery's prefork pool does: a few stay alive for
the whole run, the others each handle some tasks, write their metrics and
exit. With the stock collector every dead child's files stay and are read on
every scrape; with ours, ``compact`` merges them as they die (as the sweeper
does). Prints one table and the ratios the design asks for:

    .venv/bin/python bench/scrape.py [--checkpoints 1,100,1000] [--pool 4]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# prometheus_client picks its multiprocess value class at import; each phase
# below points the variable at its own directory before forking children.
_IMPORT_DIR = tempfile.mkdtemp(prefix="bench-scrape-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _IMPORT_DIR

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from app.metrics.guards import take_lease
from app.metrics.multiproc import collect_registry, compact, directory_stats

SERVICE_TYPES = ("security", "medical", "fire")
STATUSES = ("requested", "accepted", "completed")
ZONES = ("downtown", "harbour", "airport", "suburbs")
# The production histogram's buckets: 16 of them, 5 s to 30 min.
RESPONSE_BUCKETS = (5, 10, 15, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600, 900, 1200, 1800)


def child_work(seed: int, tasks: int) -> None:
    """What one pool child records over its life: our metric shapes, varied labels."""
    # As a pool child does at its start: compaction merges only a process whose lease it can take.
    take_lease(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
    # Metric objects are made in the child so that the parent writes no file.
    requests = Counter("panic_requests_total", "Panic requests.", ["service_type", "status", "zone"], registry=None)
    logins = Counter("auth_login_attempts_total", "Logins.", ["user_type", "result"], registry=None)
    notifications = Counter("notifications_total", "Notifications.", ["channel", "status"], registry=None)
    response = Histogram(
        "panic_request_response_time_seconds",
        "Response time.",
        ["service_type", "zone"],
        buckets=RESPONSE_BUCKETS,
        registry=None,
    )
    busy = Gauge("worker_tasks_in_progress", "Tasks in progress.", multiprocess_mode="livesum", registry=None)
    sockets = Gauge("websocket_connections", "Open websockets.", multiprocess_mode="mostrecent", registry=None)
    rng = random.Random(seed)
    for _ in range(tasks):
        busy.inc()
        service_type, zone = rng.choice(SERVICE_TYPES), rng.choice(ZONES)
        requests.labels(service_type, rng.choice(STATUSES), zone).inc()
        response.labels(service_type, zone).observe(rng.uniform(5, 1800))
        logins.labels(rng.choice(("registered_user", "guest")), rng.choice(("success", "failure"))).inc()
        notifications.labels(rng.choice(("sms", "push", "email")), "sent").inc()
        sockets.set(rng.randrange(500))
        busy.dec()


def fork_child(seed: int, tasks: int, *, stay_alive: bool) -> int:
    """Fork a child that works, then exits or (a pool member) waits for SIGTERM."""
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            child_work(seed, tasks)
            os.write(ready_write, b"x")
            while stay_alive:
                signal.pause()  # SIGTERM's default action ends the child
        finally:
            os._exit(0)
    os.read(ready_read, 1)  # its metrics are written before we measure
    os.close(ready_read)
    os.close(ready_write)
    if not stay_alive:
        os.waitpid(pid, 0)  # reaped: dead, as a recycled child is
    return pid


@dataclass
class Row:
    variant: str
    children: int
    files: int
    apparent_bytes: int
    allocated_bytes: int
    scrape_ms: float
    compact_ms: float | None


def allocated(directory: Path) -> int:
    return sum(f.stat().st_blocks * 512 for f in directory.glob("*.db"))


def time_scrapes(scrape: Callable[[], bytes], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        scrape()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def run_variant(variant: str, root: Path, args: argparse.Namespace) -> list[Row]:
    directory = root / variant
    directory.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    pool = [fork_child(seed, args.tasks, stay_alive=True) for seed in range(args.pool)]

    def scrape() -> bytes:
        if variant == "stock":
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(directory))
            return generate_latest(registry)
        return generate_latest(collect_registry(directory))

    rows: list[Row] = []
    recycled = 0
    compact_times: list[float] = []
    for checkpoint in args.checkpoints:
        while recycled < checkpoint:
            fork_child(args.pool + recycled, args.tasks, stay_alive=False)
            recycled += 1
            if variant == "ours":
                start = time.perf_counter()
                compact(directory)
                compact_times.append((time.perf_counter() - start) * 1000)
        stats = directory_stats(directory)
        rows.append(
            Row(
                variant=variant,
                children=checkpoint,
                files=stats.files,
                apparent_bytes=stats.bytes,
                allocated_bytes=allocated(directory),
                scrape_ms=time_scrapes(scrape, args.scrapes),
                compact_ms=statistics.median(compact_times) if compact_times else None,
            )
        )
        compact_times = []
        print(f"  {variant}: {checkpoint} recycled children measured", file=sys.stderr)
    for pid in pool:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    return rows


def mib(n: int) -> str:
    return f"{n / (1 << 20):9.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", default="1,100,1000", help="recycled-children counts to measure at")
    parser.add_argument("--pool", type=int, default=4, help="children alive throughout (the pool's concurrency)")
    parser.add_argument("--tasks", type=int, default=50, help="tasks each child handles before it exits")
    parser.add_argument("--scrapes", type=int, default=15, help="scrapes per measurement (median reported)")
    args = parser.parse_args()
    args.checkpoints = sorted(int(c) for c in args.checkpoints.split(","))

    with tempfile.TemporaryDirectory(prefix="bench-scrape-") as tmp:
        rows = run_variant("stock", Path(tmp), args) + run_variant("ours", Path(tmp), args)
    # The parent writes no metric; it holds only its lease (app.metrics takes one on import).
    shutil.rmtree(_IMPORT_DIR)

    print(f"\npool of {args.pool} live children, {args.tasks} tasks per child, median of {args.scrapes} scrapes\n")
    print(
        f"{'collector':9} {'recycled':>8} {'files':>6} {'apparent MiB':>12} {'on disk MiB':>11} "
        f"{'scrape ms':>10} {'compact ms':>10}"
    )
    for r in rows:
        compact_ms = f"{r.compact_ms:10.2f}" if r.compact_ms is not None else f"{'-':>10}"
        print(
            f"{r.variant:9} {r.children:8d} {r.files:6d} {mib(r.apparent_bytes):>12} "
            f"{mib(r.allocated_bytes):>11} {r.scrape_ms:10.2f} {compact_ms}"
        )

    by = {(r.variant, r.children): r for r in rows}
    first, last = args.checkpoints[0], args.checkpoints[-1]
    ours_first, ours_last, stock_last = by["ours", first], by["ours", last], by["stock", last]
    print()
    print(
        f"ours@{last} / ours@{first}:  scrape time {ours_last.scrape_ms / ours_first.scrape_ms:5.2f}x (goal <= 1.5x), "
        f"disk {ours_last.allocated_bytes / ours_first.allocated_bytes:5.2f}x (goal <= 2x)"
    )
    print(
        f"stock@{last} / ours@{last}: scrape time {stock_last.scrape_ms / ours_last.scrape_ms:6.1f}x, "
        f"disk {stock_last.allocated_bytes / ours_last.allocated_bytes:6.1f}x, "
        f"files {stock_last.files / ours_last.files:6.1f}x"
    )


if __name__ == "__main__":
    main()
