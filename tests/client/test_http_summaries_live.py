"""A real FastAPI app under `wrk`, a real worker and PostgreSQL: HTTP requests counted exactly, in few rows.

What the app served (counted by a plain ASGI wrapper outside everything) is
what `http_requests_total` counts, route by route and status by status, and
what the stored `http_summary` rows add up to; the rows are at most one per
(method, route, status) and interval, never one per request. Checked with the
broker away for part of the load and the app SIGTERMed while `wrk` still runs.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from tests.client.conftest import BreakableRedis, ClientFactory
from tests.integration.conftest import WorkerFactory
from tests.support.services import free_port, wait_until
from tests.support.worker import total

pytestmark = [pytest.mark.integration, pytest.mark.slow]

INTERVAL_SECONDS = 1.0
# (method, route under the test's prefix, status): the keys the app serves.
ROUTES = (("GET", "/panic/{request_id}", 200), ("POST", "/zones", 201), ("GET", "/broken", 503))

WEB_APP = """
import collections, json, os
from fastapi import FastAPI, HTTPException
from panic_metrics_client import PanicMetricsMiddleware

PREFIX = os.environ["TEST_PREFIX"]
served = collections.Counter()

app = FastAPI()
app.add_middleware(PanicMetricsMiddleware)

@app.get(PREFIX + "/panic/{request_id}")
async def panic(request_id: str):
    return {"id": request_id}

@app.post(PREFIX + "/zones", status_code=201)
async def zones():
    return {}

@app.get(PREFIX + "/broken")
async def broken():
    raise HTTPException(503)

async def counting(scope, receive, send):
    # Outside everything: what the app answered, by route and status, written when uvicorn's shutdown ends.
    if scope["type"] == "lifespan":
        async def receive_then_write():
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                with open(os.environ["TEST_SERVED"], "w") as out:
                    json.dump([[*key, n] for key, n in served.items()], out)
            return message
        return await app(scope, receive_then_write, send)

    async def send_counting(message):
        if message["type"] == "http.response.start":
            served[scope["method"], scope["path"].split("/")[2], message["status"]] += 1
        await send(message)

    await app(scope, receive, send_counting)
"""

# Requests spread over the three routes, one in four a POST.
WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  if n % 4 == 0 then return wrk.format("POST", "{prefix}/zones") end
  if n % 4 == 1 then return wrk.format("GET", "{prefix}/broken") end
  return wrk.format("GET", "{prefix}/panic/" .. n)
end
"""


def run_app(tmp_path: Path, redis_url: str, prefix: str) -> tuple[subprocess.Popen[bytes], str]:
    (tmp_path / "web_app.py").write_text(WEB_APP)
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "TEST_PREFIX": prefix,
        "TEST_SERVED": str(tmp_path / "served.json"),
        "PANIC_METRICS_BROKER_URL": redis_url,
        "PANIC_METRICS_SPOOL_DIR": str(tmp_path / "spool"),
        "PANIC_METRICS_RETRY_INTERVAL_MS": "200",
        "PANIC_METRICS_SUMMARY_INTERVAL_SECONDS": str(INTERVAL_SECONDS),
    }
    app = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "web_app:counting", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.post(f"{url}{prefix}/zones", timeout=2).status_code == 201
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, what="the web app answering")
    return app, url


def served_by_key(tmp_path: Path, prefix: str) -> dict[tuple[str, str, str], int]:
    """(method, endpoint template, status) -> requests the app answered."""
    templates = {route.split("/")[1]: route for _, route, _ in ROUTES}
    served = json.loads((tmp_path / "served.json").read_text())
    return {(method, prefix + templates[first], str(status)): n for method, first, status, n in served}


@pytest.mark.parametrize("fault", ["none", "outage_then_sigterm_under_load"])
def test_a_real_app_under_wrk_is_counted_exactly_in_one_row_per_route_and_interval(
    tmp_path: Path,
    fault: str,
    *,
    breakable_redis: BreakableRedis,
    make_client: ClientFactory,
    start_worker: WorkerFactory,
    pg_engine: Engine,
) -> None:
    """served = http_requests_total = the summaries' counts, key by key; rows <= keys x intervals."""
    prefix = f"/t{uuid.uuid4().hex[:10]}"
    worker = start_worker(BROKER_URL=breakable_redis.url)
    script = tmp_path / "mix.lua"
    script.write_text(WRK_SCRIPT.replace("{prefix}", prefix))
    started = time.monotonic()
    app, url = run_app(tmp_path, breakable_redis.url, prefix)
    with (tmp_path / "wrk.log").open("wb") as log:
        load = subprocess.Popen(["wrk", "-t2", "-c16", "-d8s", "-s", str(script), url], stdout=log, stderr=log)
    try:
        if fault == "none":
            load.wait(timeout=60)
            app.send_signal(signal.SIGTERM)
        else:
            time.sleep(2)
            breakable_redis.stop()  # the broker away for part of the load: summaries spool
            time.sleep(2.5)
            breakable_redis.start()
            time.sleep(1.5)
            app.send_signal(signal.SIGTERM)  # the deploy, wrk still sending
        assert app.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        load.kill()
        load.wait(timeout=30)
        app.kill()
    lifetime = time.monotonic() - started
    served = served_by_key(tmp_path, prefix)
    assert sum(served.values()) > 1_000, served
    assert {key[:2] for key in served} <= {(method, prefix + route) for method, route, _ in ROUTES}

    # Whatever the app left spooled (sent during the outage, or its last interval), the next process sends.
    heir = make_client(broker_url=breakable_redis.url)
    heir.start()

    def counted() -> dict[tuple[str, str, str], float]:
        samples = worker.scrape()
        return {
            key: total(samples, "http_requests_total", method=key[0], endpoint=key[1], status=key[2]) for key in served
        }

    wait_until(lambda: counted() == served, timeout=180, what=f"the worker counting {served}")
    with pg_engine.connect() as db:
        rows, requests, singles = db.execute(
            text(
                "SELECT count(*) FILTER (WHERE kind = 'http_summary'), "
                "coalesce(sum(request_count) FILTER (WHERE kind = 'http_summary'), 0), "
                "count(*) FILTER (WHERE kind = 'http_request') "
                "FROM metric_events WHERE endpoint LIKE :prefix"
            ),
            {"prefix": prefix + "/%"},
        ).one()
    assert requests == sum(served.values())
    assert singles == 0
    # One row per key and interval at most (+1: the probe's interval, +1: the interval cut by SIGTERM).
    intervals = math.ceil(lifetime / INTERVAL_SECONDS) + 2
    if rows > len(served) * intervals:
        with pg_engine.connect() as db:
            listed = db.execute(
                text(
                    "SELECT method, endpoint, http_status, request_count, occurred_at FROM metric_events "
                    "WHERE kind = 'http_summary' AND endpoint LIKE :prefix ORDER BY occurred_at"
                ),
                {"prefix": prefix + "/%"},
            ).all()
        pytest.fail(f"{rows} rows for {len(served)} keys in {intervals} intervals: {listed}")
    assert rows * 50 < requests  # not one row per request: a handful per interval
    stats = heir.stats()
    assert stats["dropped_spool_full"] == stats["dropped_queue_full"] == stats["dropped_spool_error"] == 0
