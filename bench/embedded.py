"""What a newcomer sees first: single events through `make run`'s embedded default (SQLite, filesystem broker).

Publishes `--events` panic requests (one message each) with the client into
the embedded broker folder of a fresh directory, then starts the worker as
`make run` does (no environment at all) and times from its first counted
event to the last, read on /metrics. Also prints the idle worker's CPU (its
main process polls the broker folder). Goal: >= 200 single events/s.

    .venv/bin/python bench/embedded.py [--events 1000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.services import free_port

BIN = Path(sys.executable).parent
PANIC = {"service_type": "security", "status": "accepted", "zone": "embedded", "firm_id": "f1", "response_time": 4.0}


def counted(port: int) -> float:
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "panic_requests_total" and sample.labels.get("zone") == "embedded"
    )


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()

    cwd = Path(tempfile.mkdtemp(prefix="panic-metrics-bench-embedded-"))
    port = free_port()
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "METRICS_PORT": str(port)}
    subprocess.run([BIN / "panic-metrics", "migrate"], cwd=cwd, env=env, check=True, capture_output=True)
    publish = (
        "from panic_metrics_client import Client, ClientSettings\n"
        "client = Client(ClientSettings(), metrics=False)\n"
        f"for _ in range({args.events}):\n"
        f"    client.record_fields('panic_request', {PANIC!r})\n"
        "    client.flush(5)\n"  # one message each, as low-rate events travel when they come one by one
        "client.close()\n"
    )
    subprocess.run([sys.executable, "-c", publish], cwd=cwd, env=env, check=True)

    worker = subprocess.Popen(
        [BIN / "celery", "-A", "workers.celery_app", "worker", "--queues", "events,scheduled", "--loglevel", "WARNING"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 600
        while counted(port) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        first = time.perf_counter()
        while (n := counted(port)) < args.events and time.monotonic() < deadline:
            time.sleep(0.1)
        seconds = time.perf_counter() - first
        before = cpu_ticks(worker.pid)
        time.sleep(10)
        idle = cpu_ticks(worker.pid) - before
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    print(
        f"embedded default: {n:.0f} single events counted in {seconds:.1f} s: {n / seconds:,.0f} events/s (goal >= 200)"
    )
    print(f"idle worker main process: {idle * 1000 // os.sysconf('SC_CLK_TCK') / 10:.1f} ms of CPU a second")


if __name__ == "__main__":
    main()
