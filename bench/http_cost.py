"""What recording HTTP requests costs the web app, and what it costs to store them, under wrk.

bench/http_app.py runs in one uvicorn process (`--no-access-log`, a fresh
process per mode) under `wrk` with bench/http_mix.lua (20 requests a cycle
over five routes with path parameters, one in 20 answering 404, one 500),
on the same machine as a real celery worker consuming from a real
redis-server into a real PostgreSQL database. The modes:

- bare: no middleware, the baseline of this run;
- instrumentator: prometheus-fastapi-instrumentator, its defaults;
- ours: `PanicMetricsMiddleware`, the client set by PANIC_METRICS_* against the bench's Redis;
- ours, broker refused: the same with PANIC_METRICS_BROKER_URL on a closed port, so every event is spooled.

Printed for each: wrk's requests/s and the app's CPU per request (utime +
stime of the uvicorn process from /proc/<pid>/stat over the load, divided by
the requests wrk completed), each against bare. For ours: once the worker has
stored everything, rows and bytes in `metric_events` per 1,000 requests for
the kinds in HTTP_KINDS (bytes: the sum of `pg_column_size` of the rows, i.e.
heap tuples without indexes, and the table's `pg_total_relation_size` delta,
indexes included), the worker's CPU per request, and whether the requests the
app served (its own count, beside wrk's) equal the increase of
`http_requests_total` on the worker's /metrics plus what the client spooled
at SIGTERM (requests finishing after it closed). For the outage: spool bytes
per request on disk, and per request as the cap counts them (message bytes),
hence how long the default cap holds at 5,000 req/s; then the app starts
again against Redis on the same spool directory, no requests, and the bench
checks that the spool drains; in the end (the spool of ours resent too)
served = counted, status by status.

The modes take turns for `--rounds` rounds (each round a fresh process per
mode, `--duration` split between them), so load from other work on the
machine falls on every mode alike; the figures are the rounds summed, with
each round's requests/s shown. Each process gets a 2 s warm-up before its
measured load; the app's own count includes it, wrk's figures do not. wrk
stops with up to `--connections` requests in flight, served but not counted
by wrk.

Needs Debian's `wrk` (/usr/bin/wrk) and `make services`; about 2-3 minutes with the defaults.

    PYTHONPATH=.:client/src .venv/bin/python bench/http_cost.py [--duration 20] [--connections 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "client" / "src")]
# The app and the worker import this checkout's code too, not an installed copy.
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "client" / "src"), os.environ.get("PYTHONPATH", "")])
RUN_DIR = Path(tempfile.mkdtemp(prefix="panic-metrics-bench-http-"))

import psycopg
from sqlalchemy import create_engine

from panic_metrics_client.settings import ClientSettings
from tests.support.db import migrate
from tests.support.processes import LoggedProcess
from tests.support.services import PostgresDatabase, RedisServer, free_port, wait_until
from tests.support.worker import Worker

#: The `metric_events` kinds that HTTP requests are stored as (the middleware sends summaries).
HTTP_KINDS = frozenset({"http_request", "http_summary"})
WRK = "/usr/bin/wrk"
LUA = Path(__file__).with_name("http_mix.lua")
#: The spool's default cap (PANIC_METRICS_SPOOL_MAX_BYTES) and the rate it is judged at.
SPOOL_CAP = ClientSettings().spool_max_bytes
OUTAGE_RATE = 5000
CLOCK_TICK_US = 1_000_000 / os.sysconf("SC_CLK_TCK")


@dataclass
class Load:
    """One mode's measured loads, round after round: wrk's figures, the app's CPU, what the app served."""

    mode: str
    requests: int = 0
    seconds: float = 0.0  # wrk's own measured time: its requests / its requests/s
    rates: list[float] = field(default_factory=list)
    non_2xx: int = 0
    socket_errors: list[str] = field(default_factory=list)
    cpu_us: float = 0.0
    served: Counter[int] = field(default_factory=Counter)
    client: dict[str, int] | None = None  # the last round's process
    wrk_total: int = 0  # warm-ups and measured loads

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_request(self) -> float:
        return self.cpu_us / max(self.requests, 1)

    @property
    def served_total(self) -> int:
        return sum(self.served.values())


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid`, every thread, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class WrkResult(NamedTuple):
    requests: int
    per_second: float
    non_2xx: int
    socket_errors: str


def wrk(url: str, seconds: float, connections: int) -> WrkResult:
    """Run wrk with the request mix; its requests, requests/s, non-2xx count and socket errors."""
    threads = min(2, connections)
    argv = [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "-s", str(LUA), url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    requests = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if requests is None or rate is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return WrkResult(
        requests=int(requests.group(1)),
        per_second=float(rate.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1) if errors else "",
    )


class App(LoggedProcess):
    """bench/http_app.py in one uvicorn process, in `mode`, with `env` (PANIC_METRICS_* for ours)."""

    def __init__(self, mode: str, env: dict[str, str], name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "uvicorn", "bench.http_app:app", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--no-access-log", "--log-level", "warning"]
        env = {"BENCH_HTTP_MODE": mode, **env}
        super().__init__(argv, env, RUN_DIR / f"app-{name}.log")
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the app's metrics stay in its own memory

    def start(self) -> None:
        self.start_process()
        wait_until(self._answers, timeout=30, what=f"uvicorn on {self.port} (log: {self.log_path})")

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"the app exited with {self.process.returncode}:\n{self.log()[-4000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the app is not running")
        return self.process.pid

    def report(self) -> tuple[dict[int, int], dict[str, int] | None]:
        """What the app printed at shutdown: served counts by status and, for ours, its client's stats()."""
        for line in reversed(self.log().splitlines()):
            if line.startswith("bench-served "):
                report: dict[str, Any] = json.loads(line.removeprefix("bench-served "))
                return {int(status): n for status, n in report["served"].items()}, report["client"]
        raise RuntimeError(f"the app printed no report at shutdown:\n{self.log()[-4000:]}")


def run_mode(load: Load, mode: str, env: dict[str, str], args: argparse.Namespace) -> None:
    """One round of `load`: a fresh app process in `mode`, warm-up, the measured load, SIGTERM and its report."""
    app = App(mode, env, f"{load.mode}-{len(load.rates)}".replace(", ", "-").replace(" ", "-"))
    app.start()
    try:
        warm = wrk(app.url, 2, args.connections)
        before = cpu_ticks(app.pid())
        measured = wrk(app.url, args.duration / args.rounds, args.connections)
        load.cpu_us += (cpu_ticks(app.pid()) - before) * CLOCK_TICK_US
    finally:
        app.stop()  # SIGTERM: the client sends or spools what it holds, then the app reports
    load.requests += measured.requests
    load.seconds += measured.requests / measured.per_second
    load.rates.append(measured.per_second)
    load.non_2xx += measured.non_2xx
    if measured.socket_errors:
        load.socket_errors.append(measured.socket_errors)
    load.wrk_total += warm.requests + measured.requests
    served, load.client = app.report()
    load.served.update(served)


class Store:
    """What the worker stored and counted: rows and bytes of HTTP kinds, `http_requests_total` by status."""

    def __init__(self, database: PostgresDatabase, worker: Worker) -> None:
        self.conninfo = database.url.replace("postgresql+psycopg://", "postgresql://")
        self.worker = worker

    def rows(self) -> tuple[int, int, int]:
        """(rows, their pg_column_size sum, the table's pg_total_relation_size) for HTTP_KINDS."""
        with psycopg.connect(self.conninfo) as connection:
            rows, size = connection.execute(
                "SELECT count(*), COALESCE(sum(pg_column_size(m.*)), 0) FROM metric_events m WHERE kind = ANY(%s)",
                (sorted(HTTP_KINDS),),
            ).fetchone() or (0, 0)
            relation = connection.execute("SELECT pg_total_relation_size('metric_events')").fetchone()
        return int(rows), int(size), int(relation[0] if relation else 0)

    def counted(self) -> dict[int, float]:
        """`http_requests_total` on the worker's /metrics, summed by status."""
        by_status: dict[int, float] = {}
        for (name, labels), value in self.worker.scrape().items():
            if name == "http_requests_total":
                status = int(dict(labels)["status"])
                by_status[status] = by_status.get(status, 0.0) + value
        return by_status

    def wait_counted(self, target: float, before: float, *, stall: float = 10) -> float:
        """Seconds until `http_requests_total` rose by `target` from `before`, or stopped moving for `stall` s."""
        started = last_change = time.monotonic()
        last = before
        while time.monotonic() - started < 600:
            now = sum(self.counted().values())
            if now - before >= target:
                break
            if now != last:
                last, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > stall:
                break
            time.sleep(0.5)
        return time.monotonic() - started


def worker_cpu_ticks(worker: Worker) -> int:
    """CPU of the worker's main process and its pool children, in clock ticks."""
    if worker.process is None:
        raise RuntimeError("the worker is not running")
    return sum(cpu_ticks(pid) for pid in [worker.process.pid, *worker.children()])


def spool_bytes(directory: Path) -> int:
    """Bytes of every file in the spool directory (SQLite files, their WAL and lock files)."""
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def spool_message_bytes(directory: Path) -> int | None:
    """The bytes the spool's cap counts (its stored messages), read from its SQLite files; None if unreadable."""
    total = 0
    try:
        for path in directory.glob("*.sqlite3"):
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                total += int(db.execute("SELECT COALESCE(SUM(bytes), 0) FROM messages").fetchone()[0])
    except sqlite3.Error:  # the spool's layout is the client's own business; it may change
        return None
    return total


def vs(load: Load, bare: Load) -> str:
    return (
        f"{load.mode:<24} {load.per_second:>9,.0f} {load.per_second / bare.per_second:>7.2f}x"
        f" {load.cpu_per_request:>9,.0f} {load.cpu_per_request / bare.cpu_per_request:>7.2f}x"
        f" {load.cpu_per_request - bare.cpu_per_request:>+10,.0f}"
    )


def check_counted(what: str, served: dict[int, int], counted: dict[int, float]) -> None:
    """Print whether the worker counted, status by status, what the app served."""
    statuses = sorted(set(served) | set(counted))
    pairs = ", ".join(f"{s}: {served.get(s, 0)}/{counted.get(s, 0):.0f}" for s in statuses)
    same = all(served.get(s, 0) == counted.get(s, 0) for s in statuses)
    print(f"  {what}: served/counted by status {pairs} -> {'equal' if same else 'DIFFERENT'}")


def resend(store: Store, env: dict[str, str], name: str, events: int) -> tuple[float, dict[str, int] | None]:
    """Start the app again in `env` against the bench's Redis, no requests, until `events` more are counted.

    Returns the seconds that took and the client's stats() at its shutdown.
    """
    before = sum(store.counted().values())
    drainer = App("ours", {**env, "PANIC_METRICS_BROKER_URL": store.worker.env["BROKER_URL"]}, name)
    drainer.start()  # its client starts at start-up and resends the spool it finds
    try:
        seconds = store.wait_counted(events, before)
    finally:
        drainer.stop()
    return seconds, drainer.report()[1]


def main() -> None:  # noqa: PLR0915 - one run, mode after mode
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20, help="seconds of measured load per mode, all rounds")
    parser.add_argument("--connections", type=int, default=32, help="wrk's open connections")
    parser.add_argument("--rounds", type=int, default=2, help="the modes in turn this many times, --duration split")
    args = parser.parse_args()

    redis = RedisServer(RUN_DIR / "redis")
    database = PostgresDatabase()
    redis.start()
    database.create()
    engine = create_engine(database.url)
    migrate(engine)
    engine.dispose()
    worker = Worker(
        {"BROKER_URL": redis.url, "DATABASE_URL": database.url, "WORKER_MAX_TASKS_PER_CHILD": "0"}, RUN_DIR / "worker"
    )
    ours_env = {"PANIC_METRICS_BROKER_URL": redis.url, "PANIC_METRICS_SPOOL_DIR": str(RUN_DIR / "spool-ours")}
    outage_spool = RUN_DIR / "spool-outage"
    refused = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    outage_env = {"PANIC_METRICS_BROKER_URL": refused, "PANIC_METRICS_SPOOL_DIR": str(outage_spool)}
    bare, instrumentator = Load("bare"), Load("instrumentator")
    ours, outage = Load("ours"), Load("ours, broker refused")
    worker_us = 0.0
    try:
        worker.start()
        store = Store(database, worker)
        rows_before, _, relation_before = store.rows()
        counted_before = store.counted()
        # Rounds interleave the modes, so the load other work puts on the machine falls on each alike.
        for _ in range(args.rounds):
            run_mode(bare, "bare", {}, args)
            run_mode(instrumentator, "instrumentator", {}, args)
            worker_before = worker_cpu_ticks(worker)
            run_mode(ours, "ours", ours_env, args)
            # Requests that finish after SIGTERM closed the client are spooled as summaries when the
            # server's lifespan ends (README), for the next process: the next round's app sends them at
            # start, the leftover of the last is resent below. Waiting stops when the count stops moving.
            drain_seconds = store.wait_counted(ours.served_total, sum(counted_before.values()))
            worker_us += (worker_cpu_ticks(worker) - worker_before) * CLOCK_TICK_US
            run_mode(outage, "ours", outage_env, args)  # each round's app adopts the spool of the one before
        counted_ours = sum(store.counted().values()) - sum(counted_before.values())
        left_ours = ours.served_total - round(counted_ours)  # in the last app's spool
        rows_after, row_bytes, relation_after = store.rows()

        spooled, spooled_messages = spool_bytes(outage_spool), spool_message_bytes(outage_spool)
        resend_seconds, resend_client = resend(store, outage_env, "broker-back", outage.served_total)
        if left_ours:
            resend(store, ours_env, "ours-leftover", left_ours)
        counted_end = store.counted()
        rows_end = store.rows()[0]
    finally:
        worker.stop()
        database.drop()
        redis.stop()

    load_line = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    print(
        f"wrk -c{args.connections}, {args.rounds} rounds of {args.duration / args.rounds:g} s a mode,"
        f" bench/http_mix.lua; {os.cpu_count()} cores; {load_line}"
    )
    print()
    print(f"{'mode':<24} {'req/s':>9} {'vs bare':>8} {'µs CPU/req':>9} {'vs bare':>8} {'µs > bare':>10}")
    for load in (bare, instrumentator, ours, outage):
        print(vs(load, bare))
    print("µs CPU/req: the uvicorn process (every thread, the client's sender too) over the load / wrk's requests")
    for load in (bare, instrumentator, ours, outage):
        errors = f"; socket errors {'; '.join(load.socket_errors)}" if load.socket_errors else ""
        rates = " ".join(f"{rate:,.0f}" for rate in load.rates)
        print(
            f"  {load.mode}: req/s by round {rates}; wrk {load.requests} requests, {load.non_2xx} non-2xx{errors};"
            f" the app served {load.served_total} with the 2 s warm-ups (wrk counted {load.wrk_total};"
            " the rest were in flight at stop)"
        )

    kinds = ", ".join(sorted(HTTP_KINDS))
    per_k = 1000 / max(counted_ours, 1)
    rows = rows_after - rows_before
    print()
    print(f"ours, stored (kinds {kinds}); all it was sent counted {drain_seconds:.1f} s after the last app stopped:")
    print(
        f"  served {ours.served_total}, counted {counted_ours:.0f}; {left_ours} requests answered after SIGTERM"
        " closed the last client, spooled as summaries, sent by the next process: see the end"
    )
    print(f"  rows per 1,000 requests counted: {rows * per_k:,.1f}  ({rows} rows)")
    print(f"  bytes per 1,000 requests counted: {row_bytes * per_k:,.0f} (sum of pg_column_size, heap tuples only)")
    print(
        f"                                   {(relation_after - relation_before) * per_k:,.0f}"
        " (pg_total_relation_size delta of metric_events, indexes included)"
    )
    print(f"  worker CPU per request (main process and children, load and drain): {worker_us * per_k / 1000:,.0f} µs")
    print(f"  the last round's client: {ours.client}")

    served = max(outage.served_total, 1)
    print()
    print(f"broker refused: {outage.served_total} requests served, spool {spooled:,} B on disk after the app stopped")
    print(f"  spool bytes per request on disk: {spooled / served:,.1f}")
    # The cap counts stored message bytes, not the files; judge it by what it counts when that can be read.
    capped = spooled_messages if spooled_messages is not None else spooled
    counted_as = "message bytes, what the cap counts" if spooled_messages is not None else "file bytes"
    holds = SPOOL_CAP / (capped / served * OUTAGE_RATE) if capped else float("inf")
    print(f"  spool bytes per request the cap counts: {capped / served:,.1f} ({counted_as})")
    print(
        f"  the default {SPOOL_CAP / 2**20:.0f} MiB cap holds {holds:,.0f} s ({holds / 60:,.1f} min) at {OUTAGE_RATE:,}"
        f" req/s; on disk then ~{SPOOL_CAP * spooled / max(capped, 1) / 2**20:,.0f} MiB"
    )
    print(f"  the last round's client (it adopted the earlier spool): {outage.client}")
    left = resend_client["spool_events"] if resend_client else None
    print(
        f"broker back (the app started again against Redis): counted within {resend_seconds:.1f} s; spool left {left}"
    )
    print(f"  the client that resent: {resend_client}")

    print()
    served_all = {s: ours.served.get(s, 0) + outage.served.get(s, 0) for s in set(ours.served) | set(outage.served)}
    increase = {s: n - counted_before.get(s, 0) for s, n in counted_end.items()}
    check_counted("ours and broker refused, in the end", served_all, increase)
    print(f"  rows of {kinds}: {rows_end - rows_before} for {sum(served_all.values())} requests served")


if __name__ == "__main__":
    main()
