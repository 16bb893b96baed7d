"""Flower follows the worker's tasks: task events are on and JSON-serialised."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import WorkerFactory
from tests.support.flower import running_flower
from tests.support.services import RedisServer, wait_until
from workers.tasks import events as tasks

pytestmark = pytest.mark.integration


def test_flower_shows_event_tasks_by_name(
    start_worker: WorkerFactory, redis_server: RedisServer, unique: str, tmp_path: Path
) -> None:
    """A real Flower on the test broker lists a task fired with .delay() as succeeded, under its stable name."""
    with running_flower(redis_server.url, tmp_path / "flower.log") as api:
        start_worker()
        result = tasks.record_panic_request_metrics.delay(service_type="fire", status="requested", zone=unique)

        def seen() -> bool:
            listed = httpx.get(f"{api}/tasks", timeout=5).json()
            return listed.get(result.id, {}).get("state") == "SUCCESS"

        wait_until(seen, timeout=60, what="the task listed as succeeded in Flower", interval=0.5)
        task = httpx.get(f"{api}/tasks", timeout=5).json()[result.id]
        assert task["name"] == "panic_metrics.events.record_panic_request_metrics"
