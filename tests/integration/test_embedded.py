"""The embedded default: no server at all, SQLite and the filesystem broker, a real prefork worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from tests.support.services import wait_until
from tests.support.worker import ROOT, Worker, embedded_environment, total, value

pytestmark = pytest.mark.integration

PUBLISH = """
from workers.tasks.events import record_events, record_panic_request_metrics
for i in range(25):
    record_panic_request_metrics.delay(service_type="fire", status="completed", zone="embedded", response_time=90.0)
record_events.delay([{"kind": "auth", "user_type": "guest", "success": True}] * 5)
"""


def test_embedded_default_records_and_exposes_events(tmp_path: Path) -> None:
    """With no servers configured, events fired with .delay() are stored in SQLite and shown on /metrics."""
    env = embedded_environment(tmp_path)
    worker = Worker(env, tmp_path / "worker").start()
    try:
        publisher_env = {**os.environ, **env, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "publisher_multiproc")}
        subprocess.run([sys.executable, "-c", PUBLISH], cwd=ROOT, env=publisher_env, check=True)
        wait_until(
            lambda: total(worker.scrape(), "panic_requests_total", zone="embedded") == 25,
            timeout=60,
            what="25 panic requests counted",
        )
        samples = worker.scrape()
        assert value(samples, "panic_request_response_time_seconds_count", service_type="fire", zone="embedded") == 25
        # The batch repeats one payload five times; each copy gets its own event id.
        wait_until(
            lambda: value(worker.scrape(), "auth_login_attempts_total", user_type="guest", result="success") == 5,
            timeout=30,
            what="the batch counted",
        )
        # The worker's own endpoint negotiates as serve-metrics does: OpenMetrics, strictly parsed, when asked.
        answer = httpx.get(worker.metrics_url, headers={"Accept": "application/openmetrics-text"}, timeout=30)
        assert answer.headers["content-type"] == "application/openmetrics-text; version=1.0.0; charset=utf-8"
        families = {family.name: family for family in parse_openmetrics(answer.text)}
        assert families["panic_requests"].type == "counter"
        assert {s.name for s in families["panic_requests"].samples} == {"panic_requests_total"}
    finally:
        worker.stop()
