"""The spool while the broker is away: does the sender keep up, and does memory stay bounded?

A web process records `--rate` events a second (logins, one event each, with
one panic request in ten; HTTP requests are summed in the process and spool
only a summary per route and interval, bench/http_cost.py) for `--seconds`, the
broker refused all along, after adopting an orphan spool of `--orphan-mb` MB
left by a process that died in an earlier outage. Printed: events recorded,
dropped for the memory queue (goal: 0) and for the spool's cap (only what
exceeds the cap, oldest first), spool writes a second (events) and bytes per
event on disk, the process's RSS before the outage and its peak during it.

    .venv/bin/python bench/spool.py [--rate 5000] [--seconds 60] [--orphan-mb 32] [--cap-mb 64]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from panic_metrics_client import Client, ClientSettings
from panic_metrics_client.messages import batch_message, event_json, event_message
from panic_metrics_client.parsing import parse_event
from panic_metrics_client.spool import Spool
from tests.support.services import free_port

HTTP = {"method": "GET", "endpoint": "/api/panics/{id}", "status": 200, "duration": 0.012}
PANIC = {"service_type": "security", "status": "accepted", "zone": "bench", "firm_id": "firm-1", "response_time": 9.5}
AUTH = {"user_type": "registered_user", "success": True}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def leave_orphan(directory: Path, megabytes: int) -> int:
    """A spool file of a process that died in an earlier outage: `megabytes` MB of HTTP-request batches."""
    if megabytes <= 0:
        return 0
    spool = Spool(directory, max_bytes=10**12)
    texts = [event_json(parse_event("http_request", HTTP)) for _ in range(500)]
    message = batch_message(texts)
    size = len(message.encode())
    batches = megabytes * 1024 * 1024 // size
    for start in range(0, batches, 200):
        spool.append([message] * min(200, batches - start))
    events = spool.events
    spool.close()
    if spool._lock_file is not None:
        os.close(spool._lock_file)  # the process dies: the kernel frees its lock
    return events


def on_disk(directory: Path) -> tuple[int, int]:
    """(events, bytes) in every spool file of `directory`, read from the files."""
    events = size = 0
    for path in directory.glob("spool-*.sqlite3"):
        with sqlite3.connect(path) as db:
            events += int(db.execute("SELECT COALESCE(SUM(events), 0) FROM messages").fetchone()[0])
        size += sum(p.stat().st_size for p in directory.glob(path.name + "*"))
    return events, size


class PeakRss(threading.Thread):
    """Samples this process's RSS every 100 ms and keeps the peak."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0.0
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.1)


def record_at(client: Client, rate: int, seconds: float) -> tuple[int, float]:
    """Record `rate` events a second for `seconds` (one panic request in ten); return (recorded, elapsed)."""
    recorded = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for _ in range(rate // 100):  # in 10 ms slices, as requests arrive
            recorded += 1
            if recorded % 10:
                client.record_fields("auth", AUTH)
            else:
                client.record_fields("panic_request", PANIC)
        time.sleep(max(0.0, started + (recorded / rate) - time.perf_counter()))
    return recorded, time.perf_counter() - started


def sender_capacity(seconds: float = 3.0) -> tuple[float, float]:
    """Events a second the sender can spool, as it does at 5k/s: a transaction per 20 ms cycle.

    Each cycle holds what 100 requests bring: ten panic requests, one message each, and a
    fifth of a 500-event batch of HTTP requests. Returns (events/s, transactions/s).
    """
    spool = Spool(Path(tempfile.mkdtemp(prefix="panic-metrics-bench-capacity-")), max_bytes=10**12)
    singles = [event_message(event_json(parse_event("panic_request", PANIC))) for _ in range(10)]
    batch = batch_message([event_json(parse_event("http_request", HTTP)) for _ in range(500)])
    cycles = events = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        cycles += 1
        messages = singles + ([batch] if cycles % 5 == 0 else [])
        spool.append(messages)
        events += sum(m.events for m in messages)
    elapsed = time.perf_counter() - started
    spool.close()
    return events / elapsed, cycles / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=5000, help="events a second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--orphan-mb", type=int, default=32, help="an orphan spool to adopt at start")
    parser.add_argument("--cap-mb", type=int, default=64, help="PANIC_METRICS_SPOOL_MAX_BYTES, in MB")
    parser.add_argument("--leave-orphan-in", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.leave_orphan_in:  # the child process that dies with a spool
        print(leave_orphan(Path(args.leave_orphan_in), args.orphan_mb))
        return
    directory = Path(tempfile.mkdtemp(prefix="panic-metrics-bench-spool-"))
    # Left by another process, so this one's memory holds none of it before adopting it.
    child = [sys.executable, __file__, "--leave-orphan-in", str(directory), "--orphan-mb", str(args.orphan_mb)]
    orphan_events = int(subprocess.run(child, check=True, capture_output=True, text=True).stdout)
    before = rss_mb()
    settings = ClientSettings(
        broker_url=f"redis://127.0.0.1:{free_port()}/0",  # refused for the whole run
        spool_dir=directory,
        spool_max_bytes=args.cap_mb * 1024 * 1024,
        retry_interval_ms=1000,
    )
    client = Client(settings, metrics=False)
    peak = PeakRss()
    peak.start()
    client.start()  # the sender adopts the orphan before the clock starts
    client.flush(timeout=120)
    adopted_at = rss_mb()

    recorded, elapsed = record_at(client, args.rate, args.seconds)
    flushed = client.flush(timeout=60)
    peak.running = False
    peak.join()
    stats = client.stats()
    events, size = on_disk(directory)
    spooled_in_run = stats["spooled"]

    print(f"rate asked {args.rate}/s for {args.seconds:.0f} s; recorded {recorded} in {elapsed:.1f} s")
    print(f"orphan adopted at start: {orphan_events} events ({args.orphan_mb} MB); cap {args.cap_mb} MB")
    print(f"flush returned {flushed}; in memory at the end: {stats['queued']}")
    print(f"dropped for the memory queue: {stats['dropped_queue_full']}  (goal: 0)")
    print(f"dropped at the spool's cap:   {stats['dropped_spool_full']}")
    print(f"dropped for a spool error:    {stats['dropped_spool_error']}")
    per_event = size / max(events, 1)
    print(f"spool writes: {spooled_in_run / elapsed:,.0f} events/s; on disk {events} events, {per_event:.0f} B/event")
    capacity, transactions = sender_capacity()
    print(
        f"the sender's spool capacity: {capacity:,.0f} events/s ({transactions:,.0f} transactions/s, synchronous=FULL)"
    )
    print(
        f"RSS: {before:.0f} MB before the outage, {adopted_at:.0f} MB after adopting the orphan, "
        f"{peak.peak:.0f} MB at its peak ({peak.peak - before:+.0f} MB)"
    )
    exact = events == orphan_events + spooled_in_run - stats["dropped_spool_full"]
    print(f"on disk = orphan + spooled - dropped at cap: {exact}")
    client.close(timeout=5)


if __name__ == "__main__":
    main()
