"""A real Prometheus scraping every second while children recycle and merges run: no series ever goes down."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, text

from app.db.models import MetricEvent
from app.demo import run_demo
from tests.integration.conftest import WorkerFactory
from tests.support.processes import LoggedProcess
from tests.support.services import free_port, wait_until
from tests.support.worker import total, value

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MONOTONIC_SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def _prometheus(tmp_path: Path, target: str) -> tuple[LoggedProcess, str]:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        f"scrape_configs:\n  - job_name: panic\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    argv = [
        "/usr/bin/prometheus",
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = LoggedProcess(argv, {}, tmp_path / "prometheus.log")
    process.start_process()
    return process, f"http://127.0.0.1:{port}"


def _query(base: str, query: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": query}, timeout=30)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def _scrapes(base: str) -> int:
    try:
        found = _query(base, 'count_over_time(up{job="panic"}[10m])')
    except httpx.HTTPError:
        return 0
    return int(float(found[0]["value"][1])) if found else 0


def test_no_series_ever_decreases_under_a_real_prometheus(
    start_worker: WorkerFactory, pg_engine: Engine, tmp_path: Path
) -> None:
    """Children recycled every few tasks, merges every second, scrapes every second: raw samples never drop."""
    assert Path("/usr/bin/prometheus").exists(), "Debian's prometheus is installed by scripts/test-services.sh"
    with pg_engine.connect() as connection:
        started_at = connection.execute(text("SELECT now()")).scalar_one()
    worker = start_worker(WORKER_MAX_TASKS_PER_CHILD="4", MULTIPROC_COMPACT_INTERVAL_SECONDS="1")
    prometheus, base = _prometheus(tmp_path, f"127.0.0.1:{worker.port}")
    try:
        wait_until(lambda: _scrapes(base) >= 2, timeout=60, what="prometheus scraping the worker")
        sent = run_demo(rate=10, duration=15, seed=9)

        def rows(*, demo_calls_only: bool = False) -> int:
            since = MetricEvent.stored_at >= started_at
            query = select(func.count()).select_from(MetricEvent).where(since)
            if not demo_calls_only:
                with pg_engine.connect() as connection:
                    return int(connection.execute(query).scalar_one())
            # The client also sums the demo's cache hits and misses in the process and sends
            # them as gauge reports of its own (no websocket figure), one per sender cycle, and
            # its HTTP requests as summaries per route and interval: how many rows depends on
            # timing, so `sent` is matched by the demo's own calls, a summary by its requests.
            calls = query.where(
                ~((MetricEvent.kind == "gauge_report") & MetricEvent.websocket_connections.is_(None)),
                MetricEvent.kind != "http_summary",
            )
            requests = select(func.coalesce(func.sum(MetricEvent.request_count), 0)).where(
                since, MetricEvent.kind == "http_summary"
            )
            with pg_engine.connect() as connection:
                return int(connection.execute(calls).scalar_one()) + int(connection.execute(requests).scalar_one())

        wait_until(lambda: rows(demo_calls_only=True) == sent, timeout=120, what="every demo event stored")
        wait_until(
            lambda: total(worker.scrape(), "metrics_events_stored_total") == rows(),
            timeout=60,
            what="every stored event counted",
        )
        # A few more scrapes, so the final state is in Prometheus too.
        scraped = _scrapes(base)
        wait_until(lambda: _scrapes(base) >= scraped + 3, timeout=60, what="three more scrapes")

        series = _query(base, '{job="panic"}[10m]')
        checked = 0
        for found in series:
            name = found["metric"]["__name__"]
            if not name.endswith(MONOTONIC_SUFFIXES):
                continue
            samples = [float(v) for _, v in found["values"]]
            drops = [(a, b) for a, b in pairwise(samples) if b < a]
            assert not drops, f"{found['metric']} went down: {drops[:3]}"
            checked += 1
        assert checked > 100, f"only {checked} counter/histogram series scraped"
        merged = _query(base, 'max_over_time(metrics_multiproc_merged_processes_total{job="panic"}[10m])')
        assert merged
        assert float(merged[0]["value"][1]) >= 3, "children must have been merged while scraped"
        stored = _query(base, 'sum(last_over_time(metrics_events_stored_total{job="panic"}[10m]))')
        assert float(stored[0]["value"][1]) == rows() == total(worker.scrape(), "metrics_events_stored_total")
        assert rows(demo_calls_only=True) == sent
        assert value(worker.scrape(), "metrics_multiproc_compaction_failures_total") == 0
    finally:
        prometheus.stop()
