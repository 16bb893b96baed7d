"""The app process dies: SIGKILL with events in the spool, SIGTERM with events in memory or in an outage."""

from __future__ import annotations

import base64
import json
import signal
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from panic_metrics_client.messages import BATCH_TASK, TASK_OF_KIND, Message
from tests.client.conftest import BreakableRedis, ClientFactory, stored_count
from tests.integration.conftest import WorkerFactory
from tests.support.services import free_port, wait_until
from tests.support.worker import total

pytestmark = pytest.mark.integration

# An app process: records `count` HTTP requests (summed in the process) and auth events through
# the seed's names, prints the auth events' ids once they are handed over, then waits to be signalled.
APP = """
import signal, sys
from panic_metrics_client import flush, get_client, record_auth_metrics, record_http_request_metrics
count = int(sys.argv[1])
get_client()
ids = []
for i in range(count):
    assert record_http_request_metrics(method="GET", endpoint="/api/{id}", status=200, duration=0.01)
    ids.append(record_auth_metrics.delay(user_type="registered_user", success=True))
if sys.argv[2] == "flush":
    assert flush(30)
print(" ".join(str(i) for i in ids), flush=True)
signal.pause()
"""


# A web process shut down gracefully (as uvicorn or gunicorn do): its own SIGTERM handler only
# asks it to stop, the client's runs first (close), and a request still in flight finishes after.
GRACEFUL_APP = """
import signal, sys, threading
from panic_metrics_client import flush, get_client, record_panic_request_metrics
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
get_client().start()
zone, flushed, in_flight = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def request():
    return record_panic_request_metrics.delay(
        service_type="security", status="accepted", zone=zone, firm_id="f1", response_time=1.5
    )
ids = [request() for _ in range(flushed)]
assert flush(60)
ids += [request() for _ in range(in_flight)]
print(" ".join(str(i) for i in ids), flush=True)
while not stopping.wait(0.05):
    pass
print(request(), flush=True)
"""


# A web process under steady load: records HTTP requests (a summary every few milliseconds here)
# and panic requests until it is killed.
STREAMING_APP = """
import time
from panic_metrics_client import get_client, record_http_request_metrics, record_panic_request_metrics
get_client().start()
print("recording", flush=True)
while True:
    for _ in range(20):
        record_http_request_metrics(method="GET", endpoint="/api/{id}", status=200, duration=0.01)
    for _ in range(5):
        record_panic_request_metrics.delay(service_type="fire", status="requested", zone="z", firm_id="f1")
    time.sleep(0.002)
"""


def spooled_events(directory: Path) -> list[dict[str, Any]]:
    """The events in every spool file of `directory`, read from the files."""
    events = []
    for path in directory.glob("spool-*.sqlite3"):
        with sqlite3.connect(path) as db:
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone() is None:
                continue  # just created: nothing in it yet
            for (text,) in db.execute("SELECT body FROM messages"):
                message = Message.decode(text)
                kwargs = json.loads(message.kwargs_json)
                events += kwargs.get("events", [kwargs])
    return events


def run_app(
    tmp_path: Path,
    broker_url: str,
    count: int,
    *,
    flush: bool,
    script_text: str = APP,
    args: list[str] | None = None,
    **env: str,
) -> subprocess.Popen[str]:
    script = tmp_path / "app_process.py"
    script.write_text(script_text)
    environment = {
        "PANIC_METRICS_BROKER_URL": broker_url,
        "PANIC_METRICS_SPOOL_DIR": str(tmp_path / "spool"),
        "PANIC_METRICS_SEND_TIMEOUT_MS": "300",
        "PANIC_METRICS_MODE": "development",
        "PATH": "/usr/bin:/bin",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(script), *(args or [str(count), "flush" if flush else "keep"])],
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )


def close(process: subprocess.Popen[str]) -> None:
    if process.stdout is not None:
        process.stdout.close()


def queued_events(server: BreakableRedis) -> list[dict[str, Any]]:
    """The events of every message waiting in the broker's `events` list, each naming its kind."""
    kind_of_task = {task: kind for kind, task in TASK_OF_KIND.items()}
    events = []
    with redis.Redis.from_url(server.url) as connection:
        for raw in connection.lrange("events", 0, -1):
            message = json.loads(raw)
            _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            if message["headers"]["task"] == BATCH_TASK:
                events += kwargs["events"]
            else:  # one event sent as `.delay(**fields)` sends it: its kind is in the task name
                events.append({"kind": kind_of_task[message["headers"]["task"]], **kwargs})
    return events


def queued_event_ids(server: BreakableRedis, kind: str | None = None) -> list[str]:
    """The event ids waiting in the broker, all or of `kind` only."""
    return [e["event_id"] for e in queued_events(server) if kind in (None, e["kind"])]


def summed_requests(server: BreakableRedis) -> int:
    """The HTTP requests in the summaries waiting in the broker."""
    return sum(e["count"] for e in queued_events(server) if e["kind"] == "http_summary")


def test_events_spooled_by_a_killed_process_are_sent_by_the_next_start(
    tmp_path: Path, breakable_redis: BreakableRedis
) -> None:
    """SIGKILL while the broker is away: the spool keeps the events and the next process sends them."""
    refused = f"redis://127.0.0.1:{free_port()}/0"
    first = run_app(tmp_path, refused, 40, flush=True)
    try:
        assert first.stdout is not None
        ids = first.stdout.readline().split()
        assert len(ids) == 40
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        close(first)
    assert list((tmp_path / "spool").glob("spool-*.sqlite3"))

    second = run_app(tmp_path, breakable_redis.url, 0, flush=True)
    try:
        wait_until(
            lambda: sorted(queued_event_ids(breakable_redis, "auth")) == sorted(ids),
            timeout=60,
            what="the dead process's events on the broker",
        )
    finally:
        second.terminate()
        second.wait(timeout=10)
        close(second)
    assert sorted(queued_event_ids(breakable_redis, "auth")) == sorted(ids)
    assert summed_requests(breakable_redis) == 40  # flushed into the spool as summaries before the kill
    assert not list((tmp_path / "spool").glob("spool-*.sqlite3"))  # adopted, drained and removed


def test_sigterm_sends_what_is_in_memory(tmp_path: Path, breakable_redis: BreakableRedis) -> None:
    """SIGTERM with HTTP requests in the open interval and auth events waiting for their batch: the handler
    sends them all, then the process ends."""
    # The wait at SIGTERM is bounded (then what is left is spooled); a generous bound, so a loaded
    # machine cannot turn "sent" into "spooled" here.
    app = run_app(
        tmp_path,
        breakable_redis.url,
        30,
        flush=False,
        PANIC_METRICS_BATCH_INTERVAL_MS="600000",
        PANIC_METRICS_SUMMARY_INTERVAL_SECONDS="600",
        PANIC_METRICS_FLUSH_TIMEOUT_MS="30000",
    )
    assert app.stdout is not None
    ids = app.stdout.readline().split()
    assert len(ids) == 30
    app.send_signal(signal.SIGTERM)
    try:
        assert app.wait(timeout=30) == -signal.SIGTERM  # the default action still ends it
    finally:
        app.kill()
        close(app)
    assert sorted(queued_event_ids(breakable_redis, "auth")) == sorted(ids)
    assert summed_requests(breakable_redis) == 30


def test_a_deploy_during_an_outage_keeps_every_spooled_event(
    tmp_path: Path,
    breakable_redis: BreakableRedis,
    make_client: ClientFactory,
    start_worker: WorkerFactory,
    pg_engine: Engine,
) -> None:
    """Broker away, spool over half full, SIGTERM with requests in flight, a late request answered: all stored once."""
    unique = f"t{uuid.uuid4().hex[:10]}"
    breakable_redis.stop()  # refused for the whole life of the app process
    app = run_app(
        tmp_path,
        breakable_redis.url,
        0,
        flush=False,
        script_text=GRACEFUL_APP,
        args=[unique, "3000", "200"],
        PANIC_METRICS_SPOOL_MAX_BYTES="1000000",
        PANIC_METRICS_RETRY_INTERVAL_MS="200",
    )
    try:
        assert app.stdout is not None
        ids = app.stdout.readline().split()
        assert len(ids) == 3_200
        app.send_signal(signal.SIGTERM)
        ids.append(app.stdout.readline().strip())  # the request that finished during the shutdown
        assert app.wait(timeout=60) == 0
    finally:
        app.kill()
        close(app)
    assert len(set(ids)) == 3_201

    breakable_redis.start()
    worker = start_worker(BROKER_URL=breakable_redis.url)
    heir = make_client(broker_url=breakable_redis.url)  # the next process on the host adopts the spool
    heir.start()
    wait_until(lambda: stored_count(pg_engine, ids) == len(ids), timeout=180, what="every spooled event stored")
    stats = heir.stats()
    assert stats["dropped_spool_full"] == stats["spool_events"] == 0
    assert stats["sent"] >= len(ids)
    wait_until(
        lambda: total(worker.scrape(), "panic_requests_total", zone=unique) == len(ids),
        timeout=60,
        what="every event counted",
    )
    assert stored_count(pg_engine, ids) == 3_201
    assert total(worker.scrape(), "panic_requests_total", zone=unique) == 3_201


def test_a_process_killed_mid_stream_loses_nothing_that_reached_its_spool(
    tmp_path: Path, breakable_redis: BreakableRedis
) -> None:
    """SIGKILL while events stream into the spool: every event in the file is sent by the next process, once."""
    refused = f"redis://127.0.0.1:{free_port()}/0"
    app = run_app(
        tmp_path,
        refused,
        0,
        flush=False,
        script_text=STREAMING_APP,
        PANIC_METRICS_RETRY_INTERVAL_MS="200",
        PANIC_METRICS_SUMMARY_INTERVAL_SECONDS="0.01",
    )
    spool = tmp_path / "spool"
    try:
        assert app.stdout is not None
        assert app.stdout.readline().strip() == "recording"
        wait_until(lambda: len(spooled_events(spool)) >= 5_000, timeout=60, what="events streaming into the spool")
    finally:
        app.send_signal(signal.SIGKILL)
        app.wait(timeout=10)
        close(app)
    on_disk = [e["event_id"] for e in spooled_events(spool)]
    assert len(on_disk) == len(set(on_disk)) >= 5_000
    assert any(e.get("kind") == "http_summary" for e in spooled_events(spool))

    heir = run_app(tmp_path, breakable_redis.url, 0, flush=True)
    try:
        wait_until(
            lambda: len(queued_event_ids(breakable_redis)) >= len(on_disk), timeout=60, what="the spool on the broker"
        )
    finally:
        heir.terminate()
        heir.wait(timeout=10)
        close(heir)
    queued = queued_event_ids(breakable_redis)
    assert sorted(queued) == sorted(on_disk)  # all of it, each once, and nothing it never held
