"""Tasks that carry a fault into a real worker (`celery worker --include tests.faults.fault_tasks`).

They share the event tasks' base (delivery cap, quarantine, retries); the
fault is in the task so it strikes at the same point on every delivery.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from workers.celery_app import app
from workers.tasks.events import EventTask

INCLUDE = ("--include", "tests.faults.fault_tasks")


def _log_delivery(task: EventTask) -> None:
    path = os.environ.get("FAULT_DELIVERY_LOG")
    if path:
        with Path(path).open("a", encoding="utf-8") as log:
            log.write(f"{task.request.id} {os.getpid()}\n")


@app.task(base=EventTask, bind=True, name="tests.faults.slow_record_events")
def slow_record_events(self: EventTask, /, events: list[Any], seconds: float) -> dict[str, int]:
    """Store events after `seconds`: a task that outlives the visibility timeout."""
    _log_delivery(self)
    time.sleep(seconds)
    return self.ingest(events, kind=None)


@app.task(base=EventTask, bind=True, name="tests.faults.poison_record_events")
def poison_record_events(self: EventTask, /, events: list[Any]) -> dict[str, int]:
    """Kill the child on every run before its events are stored: a payload that crashes a driver."""

    def crash() -> dict[str, int]:
        _log_delivery(self)  # a run: the delivery cap let it through
        os.kill(os.getpid(), signal.SIGKILL)
        return {}

    # Through ingest's delivery cap, as a crashing payload would go.
    original, self._ingest = self._ingest, lambda *_args, **_kwargs: crash()  # type: ignore[method-assign]
    try:
        return self.ingest(events, kind=None)
    finally:
        self._ingest = original  # type: ignore[method-assign]


@app.task(base=EventTask, bind=True, name="tests.faults.stubborn_record_events")
def stubborn_record_events(self: EventTask, /, events: list[Any], seconds: float) -> dict[str, int]:
    """Ignore the soft time limit and run on: only the hard limit stops it (a child stuck in C code)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            continue
    return self.ingest(events, kind=None)
