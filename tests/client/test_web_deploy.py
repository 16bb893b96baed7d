"""A deploy during a broker outage: a real uvicorn app under load is SIGTERMed, and nothing it served is lost.

uvicorn's graceful shutdown answers the requests in flight after the
client's SIGTERM handler has closed it: those late requests go to the same
spool file. Once the broker is back, the next process on the host sends the
spool, and a real worker counts every request the app served, once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import httpx
import pytest

from tests.client.conftest import BreakableRedis, ClientFactory
from tests.integration.conftest import WorkerFactory
from tests.support.services import free_port, wait_until
from tests.support.worker import total

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The platform's app: the middleware on every request, a panic request recorded by app code on one in ten.
# It writes what it served when uvicorn's shutdown ends, after the last request was answered.
WEB_APP = """
import contextlib, os
from fastapi import FastAPI
from panic_metrics_client import PanicMetricsMiddleware, record_panic_request_metrics

ZONE = os.environ["TEST_ZONE"]
served = {"requests": 0, "panics": 0}

@contextlib.asynccontextmanager
async def lifespan(app):
    yield
    with open(os.environ["TEST_SERVED"], "w") as out:
        out.write(f"{served['requests']} {served['panics']}")

app = FastAPI(lifespan=lifespan)
app.add_middleware(PanicMetricsMiddleware)

@app.get("/" + ZONE + "/{request_id}")
async def panic(request_id: str):
    served["requests"] += 1
    if served["requests"] % 10 == 0:
        served["panics"] += 1
        record_panic_request_metrics.delay(
            service_type="medical", status="requested", zone=ZONE, firm_id="f1", response_time=3.0
        )
    return {"id": request_id}
"""


def load(url: str, stop: threading.Event, answered: list[int]) -> None:
    """Requests back to back until told to stop or the server stops answering."""
    with httpx.Client(timeout=10) as http:
        while not stop.is_set():
            try:
                http.get(f"{url}/{uuid.uuid4().hex[:8]}").raise_for_status()
            except httpx.HTTPError:
                return
            answered.append(1)


def test_a_real_web_app_sigtermed_under_load_in_an_outage_loses_no_request(
    tmp_path: Path, breakable_redis: BreakableRedis, make_client: ClientFactory, start_worker: WorkerFactory
) -> None:
    """uvicorn under load, broker refused, SIGTERM mid-load: every request served is counted once afterwards."""
    zone = f"t{uuid.uuid4().hex[:10]}"
    (tmp_path / "web_app.py").write_text(WEB_APP)
    breakable_redis.stop()  # refused for the app's whole life
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "TEST_ZONE": zone,
        "TEST_SERVED": str(tmp_path / "served"),
        "PANIC_METRICS_BROKER_URL": breakable_redis.url,
        "PANIC_METRICS_SPOOL_DIR": str(tmp_path / "spool"),
        "PANIC_METRICS_RETRY_INTERVAL_MS": "200",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "web_app:app", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
    )
    url = f"http://127.0.0.1:{port}/{zone}"
    stop = threading.Event()
    answered: list[int] = []
    threads = [threading.Thread(target=load, args=(url, stop, answered)) for _ in range(8)]
    try:

        def up() -> bool:
            try:
                return httpx.get(f"{url}/first", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=60, what="the web app answering")
        for thread in threads:
            thread.start()
        wait_until(lambda: len(answered) >= 3_000, timeout=120, what="load on the app")
        server.send_signal(signal.SIGTERM)  # the deploy: requests still in flight
        # uvicorn answers what is in flight, runs the app's shutdown, then dies of the signal it held back.
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.kill()
    requests, panics = (int(n) for n in (tmp_path / "served").read_text().split())
    assert requests >= len(answered) + 1  # every answer we saw, and the first probe, were served and recorded

    breakable_redis.start()
    worker = start_worker(BROKER_URL=breakable_redis.url)
    heir = make_client(broker_url=breakable_redis.url)  # the next process on the host sends the spool
    heir.start()
    endpoint = f"/{zone}/{{request_id}}"

    def counted() -> tuple[float, float]:
        samples = worker.scrape()
        return total(samples, "http_requests_total", endpoint=endpoint), total(
            samples, "panic_requests_total", zone=zone
        )

    wait_until(lambda: counted() == (requests, panics), timeout=180, what=f"{requests} requests and {panics} counted")
    stats = heir.stats()
    assert stats["dropped_spool_full"] == stats["dropped_queue_full"] == stats["dropped_spool_error"] == 0
    assert counted() == (requests, panics)
