"""A full metrics disk under a real worker: no child dies, consuming stops, and every event counts once after."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.faults.conftest import Stream, WorkerStarter
from tests.support.disk import small_tmpfs
from tests.support.services import wait_until
from tests.support.worker import Worker, total

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def metrics_disk(worker: Worker) -> dict[str, Any]:
    """The worker's /health answer about its metrics disk."""
    check: dict[str, Any] = httpx.get(worker.health_url, timeout=10).json()["checks"]["metrics_disk"]
    return check


def counted(worker: Worker, stream: Stream) -> float:
    """The stream's panic requests as the worker's /metrics counts them."""
    return total(worker.scrape(), "panic_requests_total", zone=stream.zone)


def test_a_full_metrics_disk_stops_consuming_and_every_event_is_stored_and_counted_once_after(
    redis_stream: tuple[dict[str, str], Stream], start_fault_worker: WorkerStarter, tmp_path: Path
) -> None:
    """Issue 28, fault 2: the disk fills mid-stream; no SIGBUS, consuming stops, /health says why, then all once."""
    env, stream = redis_stream
    queue = redis.Redis.from_url(env["BROKER_URL"])
    with small_tmpfs(tmp_path / "metrics", size="8M") as disk:
        worker = start_fault_worker({**env, "PROMETHEUS_MULTIPROC_DIR": str(disk.path)})
        assert metrics_disk(worker)["state"] == "ok"
        stream.publish_many(20)
        stream.wait_stored(10, timeout=60, what="progress before the disk fills")

        disk.fill()
        stream.publish_many(20)
        wait_until(lambda: metrics_disk(worker)["state"] == "full", timeout=30, what="/health saying the disk is full")
        assert httpx.get(worker.health_url, timeout=10).status_code == 503
        # Stopped consuming: what is published now stays on the broker, and nothing more is stored.
        stored = stream.stored()
        stream.publish_many(10)
        wait_until(lambda: queue.llen("events") >= 10, timeout=30, what="new messages left on the broker")
        assert stream.stored() == stored
        assert counted(worker, stream) == stored  # nothing stored that is not counted

        disk.free()
        wait_until(lambda: metrics_disk(worker)["state"] == "ok", timeout=30, what="consuming resumed")
        stream.assert_complete()
        sent = len(stream.acknowledged)
        wait_until(lambda: counted(worker, stream) == sent, timeout=30, what="every stored event counted")
        assert stream.stored() == sent == counted(worker, stream)

    log = worker.log()
    assert "SIGBUS" not in log
    assert "exited with" not in log  # no pool child died
