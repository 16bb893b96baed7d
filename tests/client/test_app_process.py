"""The app process dies: SIGKILL with events in the spool, SIGTERM with events in memory."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.client.conftest import BreakableRedis
from tests.support.services import free_port, wait_until

pytestmark = pytest.mark.integration

# An app process: records `count` HTTP requests and auth events through the seed's names,
# prints their ids once they are handed over, then waits to be signalled.
APP = """
import signal, sys
from panic_metrics_client import flush, get_client, record_auth_metrics, record_http_request_metrics
count = int(sys.argv[1])
get_client()
ids = []
for i in range(count):
    ids.append(record_http_request_metrics(method="GET", endpoint="/api/{id}", status=200, duration=0.01))
    ids.append(record_auth_metrics.delay(user_type="registered_user", success=True))
if sys.argv[2] == "flush":
    assert flush(30)
print(" ".join(str(i) for i in ids), flush=True)
signal.pause()
"""


def run_app(tmp_path: Path, broker_url: str, count: int, *, flush: bool, **env: str) -> subprocess.Popen[str]:
    script = tmp_path / "app_process.py"
    script.write_text(APP)
    environment = {
        "PANIC_METRICS_BROKER_URL": broker_url,
        "PANIC_METRICS_SPOOL_DIR": str(tmp_path / "spool"),
        "PANIC_METRICS_SEND_TIMEOUT_MS": "300",
        "PANIC_METRICS_MODE": "development",
        "PATH": "/usr/bin:/bin",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(script), str(count), "flush" if flush else "keep"],
        env=environment,
        stdout=subprocess.PIPE,
        text=True,
    )


def close(process: subprocess.Popen[str]) -> None:
    if process.stdout is not None:
        process.stdout.close()


def queued_event_ids(server: BreakableRedis) -> list[str]:
    """The event ids of every message waiting in the broker's `events` list."""
    ids = []
    with redis.Redis.from_url(server.url) as connection:
        for raw in connection.lrange("events", 0, -1):
            message = json.loads(raw)
            _args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            ids += [e["event_id"] for e in kwargs.get("events", [kwargs])]
    return ids


def test_events_spooled_by_a_killed_process_are_sent_by_the_next_start(
    tmp_path: Path, breakable_redis: BreakableRedis
) -> None:
    """SIGKILL while the broker is away: the spool keeps the events and the next process sends them."""
    refused = f"redis://127.0.0.1:{free_port()}/0"
    first = run_app(tmp_path, refused, 40, flush=True)
    try:
        assert first.stdout is not None
        ids = first.stdout.readline().split()
        assert len(ids) == 80
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        close(first)
    assert list((tmp_path / "spool").glob("spool-*.sqlite3"))

    second = run_app(tmp_path, breakable_redis.url, 0, flush=True)
    try:
        wait_until(
            lambda: sorted(queued_event_ids(breakable_redis)) == sorted(ids),
            timeout=60,
            what="the dead process's events on the broker",
        )
    finally:
        second.terminate()
        second.wait(timeout=10)
        close(second)
    assert sorted(queued_event_ids(breakable_redis)) == sorted(ids)
    assert not list((tmp_path / "spool").glob("spool-*.sqlite3"))  # adopted, drained and removed


def test_sigterm_sends_what_is_in_memory(tmp_path: Path, breakable_redis: BreakableRedis) -> None:
    """SIGTERM with HTTP requests waiting in memory for their batch: the handler sends them, then the process ends."""
    # The wait at SIGTERM is bounded (then what is left is spooled); a generous bound, so a loaded
    # machine cannot turn "sent" into "spooled" here.
    app = run_app(
        tmp_path,
        breakable_redis.url,
        30,
        flush=False,
        PANIC_METRICS_BATCH_INTERVAL_MS="600000",
        PANIC_METRICS_FLUSH_TIMEOUT_MS="30000",
    )
    assert app.stdout is not None
    ids = app.stdout.readline().split()
    assert len(ids) == 60
    app.send_signal(signal.SIGTERM)
    try:
        assert app.wait(timeout=30) == -signal.SIGTERM  # the default action still ends it
    finally:
        app.kill()
        close(app)
    assert sorted(queued_event_ids(breakable_redis)) == sorted(ids)
