"""Recycled pool children: every event counted once, the directory keeps live children and the archive only."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import WorkerFactory
from tests.support.services import wait_until
from tests.support.worker import Worker, scrape, standalone_endpoint, total, value
from workers.tasks import events as tasks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MESSAGES = 200
PER_MESSAGE = 10


def file_owners(worker: Worker) -> set[str]:
    """The pid (or `archive`) each metric file of the worker's directory belongs to."""
    return {path.stem.rsplit("_", 1)[-1] for path in worker.multiproc_dir.glob("*.db")}


def only_live_children_and_archive(worker: Worker) -> bool:
    # The main process serves the endpoint and holds the closed-set series at 0 from the start.
    assert worker.process is not None
    live = {str(pid) for pid in worker.children()} | {str(worker.process.pid)}
    return file_owners(worker) - {"archive"} <= live


def test_children_recycled_after_every_task_count_every_event_once(start_worker: WorkerFactory, unique: str) -> None:
    """max_tasks_per_child=1: 200 children come and go, 2,000 events counted exactly, dead files merged away."""
    worker = start_worker(WORKER_MAX_TASKS_PER_CHILD="1", MULTIPROC_COMPACT_INTERVAL_SECONDS="0.5")
    for _ in range(MESSAGES):
        tasks.record_events.delay(
            [
                {
                    "kind": "panic_request",
                    "service_type": "security",
                    "status": "arrived",
                    "zone": unique,
                    "response_time": 42.0,
                }
            ]
            * PER_MESSAGE
        )

    wait_until(
        lambda: total(worker.scrape(), "panic_requests_total", zone=unique) == MESSAGES * PER_MESSAGE,
        timeout=300,
        what="2,000 events counted",
        interval=0.5,
    )
    wait_until(lambda: only_live_children_and_archive(worker), timeout=30, what="dead children's files merged")
    samples = worker.scrape()
    assert value(samples, "panic_requests_total", service_type="security", status="arrived", zone=unique) == 2000
    assert value(samples, "panic_request_response_time_seconds_count", service_type="security", zone=unique) == 2000
    assert value(samples, "metrics_multiproc_merged_processes_total") >= MESSAGES - 2
    assert value(samples, "metrics_multiproc_writable") == 1
    assert "archive" in file_owners(worker)
    assert value(samples, "metrics_multiproc_files") <= 4 * (len(worker.children()) + 2)


def test_standalone_endpoint_serves_and_compacts_a_directory_shared_by_workers(
    start_worker: WorkerFactory, unique: str, tmp_path: Path
) -> None:
    """`panic-metrics serve-metrics` aggregates two workers sharing its directory and merges their dead children."""
    with standalone_endpoint(tmp_path) as (url, shared):
        # Workers that leave the endpoint (and the directory) to it: no endpoint, no wipe.
        for name in ("a", "b"):
            start_worker(
                workdir=tmp_path / name,
                METRICS_ENABLED="false",
                PROMETHEUS_MULTIPROC_DIR=str(shared),
                WORKER_MAX_TASKS_PER_CHILD="2",
                health_url=url,
            )
        for _ in range(40):
            tasks.record_events.delay(
                [{"kind": "panic_request", "service_type": "fire", "status": "completed", "zone": unique}] * 5
            )
        wait_until(
            lambda: total(scrape(url), "panic_requests_total", zone=unique) == 200,
            timeout=120,
            what="200 events counted through the standalone endpoint",
            interval=0.5,
        )
        wait_until(
            lambda: value(scrape(url), "metrics_multiproc_merged_processes_total") > 0,
            timeout=30,
            what="dead children merged by the standalone endpoint",
        )
        assert total(scrape(url), "panic_requests_total", zone=unique) == 200
