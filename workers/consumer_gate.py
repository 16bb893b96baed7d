"""Stops the worker consuming while its metrics directory has no room, and resumes when space returns.

A pool child refuses to store an event whose count could not land (a full
disk: app.ingest.MetricsUnwritable) and gives the message back. Without this
gate the broker would hand it straight back, again and again. The gate, a
thread of the worker's main process, asks the same question the children
ask (app.metrics.multiproc.writable) every second and cancels the consumer
of the worker's task queues while the answer is no, then adds them back.
Only the task queues: the consuming probe's own queue stays, so /health
still proves the worker alive while it waits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app import forksafe
from app.metrics.multiproc import writable

log = logging.getLogger(__name__)

#: How often the main process looks at the directory; a child refusing meanwhile holds each message about as long.
CHECK_SECONDS = 1.0


class MetricsDiskGate:
    """Cancels `queues` on a Celery consumer while `directory` has no room for metric files; adds them back after."""

    def __init__(self, consumer: Any, directory: Path, queues: Iterable[str], interval: float = CHECK_SECONDS) -> None:
        self.consumer = consumer
        self.directory = directory
        self.queues = sorted(queues)
        self.interval = interval
        self.stopped_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-disk-gate", daemon=True)

    def start(self) -> None:
        """Check now and every interval."""
        self._thread.start()

    def stop(self) -> None:
        """Stop checking (the worker shuts down; its consumer goes with it)."""
        self._stop.set()

    def check_now(self) -> None:
        """Stop or resume consuming by what the directory says now."""
        full = not writable(self.directory)
        if full and self.stopped_since is None:
            self.stopped_since = time.time()
            log.warning(
                "metrics directory full: stopped consuming until space returns",
                extra={"path": str(self.directory), "queues": self.queues},
            )
            for queue in self.queues:
                # What `celery control cancel_consumer` does, without the round trip through the
                # broker: the consumer's own loop runs it (call_soon is how its control commands do).
                self.consumer.call_soon(self.consumer.cancel_task_queue, queue)
        elif not full and self.stopped_since is not None:
            self.stopped_since = None
            log.info("metrics directory has room again: consuming resumed", extra={"queues": self.queues})
            for queue in self.queues:
                self.consumer.call_soon(self.consumer.add_task_queue, queue)

    def status(self) -> dict[str, Any]:
        """For /health: `ok` while the directory has room and the worker consumes its queues."""
        if self.stopped_since is None:
            return {"ok": True, "state": "ok", "consuming": self.queues}
        return {
            "ok": False,
            "state": "full",
            "consuming": [],
            "stopped_queues": self.queues,
            "stopped_for_seconds": round(time.time() - self.stopped_since, 3),
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with forksafe.unit():  # never forked half-way into a pool child (app.forksafe)
                    self.check_now()
            except Exception:
                log.exception("metrics disk gate check failed")
            self._stop.wait(self.interval)
