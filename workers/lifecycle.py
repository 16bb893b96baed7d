"""Worker signals: the multiprocess directory, the endpoint thread, task metrics."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, signals

from app import forksafe
from app.config import get_settings
from app.db.session import dispose_engines
from app.metrics import definitions as m
from app.metrics import endpoint
from app.metrics.endpoint import EndpointServer, housekeeper, multiproc_dir, refuse_unsafe_exposure
from app.metrics.multiproc import wipe_directory
from workers.celery_app import app

log = logging.getLogger(__name__)

_endpoint: EndpointServer | None = None
_task_started: dict[str, float] = {}

PROBE_TASK = "panic_metrics.consuming_probe"


class ConsumingProbe:
    """Proves this worker consumes: a probe sent through the broker to its own queue, run by a pool child.

    Liveness is not enough: after a Redis restart some workers stay up but
    never consume again (celery #8030, #8384), and a pool can hold reserved
    messages it never runs. The probe crosses all of it (publish, broker,
    this worker's consumer, a pool child), and the child touches a file
    whose age /health reports.
    """

    def __init__(self, app: Celery, hostname: str, interval: float) -> None:
        self.app = app
        self.queue = f"probe.{hostname}"
        self.interval = interval
        self.path = Path(tempfile.gettempdir()) / f"panic-metrics-consuming-{os.getpid()}"
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consuming-probe", daemon=True)

    def start(self) -> None:
        """Send a probe now and every interval."""
        self.path.unlink(missing_ok=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sending probes."""
        self._stop.set()
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with forksafe.unit():  # kombu's pools and locks: never forked half-way (app.forksafe)
                    self.app.send_task(
                        PROBE_TASK, args=[str(self.path)], queue=self.queue, expires=self.interval * 3, retry=False
                    )
            except Exception as exc:  # noqa: BLE001 - a broker down is what the probe reports; keep probing
                log.warning("consuming probe not sent", extra={"error": type(exc).__name__})
            self._stop.wait(self.interval)

    def status(self) -> dict[str, Any]:
        """`ok` while a probe ran within three intervals (or the worker started less than that ago)."""
        try:
            last = self.path.stat().st_mtime
        except FileNotFoundError:
            last = None
        age = time.time() - (last if last is not None else self.started)
        return {
            "ok": age < 3 * self.interval,
            "last_consumed_age_seconds": round(age, 3) if last is not None else None,
            "limit_seconds": 3 * self.interval,
        }


_probe: ConsumingProbe | None = None


@app.task(name=PROBE_TASK, ignore_result=True)
def consuming_probe(path: str) -> None:
    """Touch the worker's probe file: this worker consumed and ran a message just now."""
    Path(path).touch()


@signals.celeryd_after_setup.connect
def _consume_probe_queue(sender: str | None = None, instance: Any = None, **_: Any) -> None:
    global _probe  # noqa: PLW0603 - one probe per worker main process
    if instance is None or sender is None:
        return
    _probe = ConsumingProbe(instance.app, sender, get_settings().worker_consuming_probe_seconds)
    # Consumed whatever -Q says: a queue of this worker's own.
    instance.app.amqp.queues.select_add(_probe.queue)


@signals.worker_ready.connect
def _start_probe(**_: Any) -> None:
    if _probe is not None:
        endpoint.consuming_check = _probe.status
        _probe.start()


@signals.worker_shutdown.connect
def _stop_probe(**_: Any) -> None:
    if _probe is not None:
        _probe.stop()


@signals.worker_init.connect
def _refuse_public_endpoint_without_credentials(**_: Any) -> None:
    # Before the pool starts, so a refused worker consumes nothing.
    settings = get_settings()
    if settings.metrics_enabled:
        refuse_unsafe_exposure(settings, settings.metrics_host)


@signals.worker_init.connect
def _clear_multiproc_dir(**_: Any) -> None:
    # By the book: the worker that serves the endpoint owns the directory and
    # wipes it before the pool starts, so counts of a previous run (whose
    # processes are gone) do not linger. Every metric has labels, so this
    # process has no metric file open yet. With METRICS_ENABLED=false the
    # standalone endpoint owns a directory shared by several workers, and
    # wiping it would drop the others' counts.
    if get_settings().metrics_enabled:
        wipe_directory(multiproc_dir())


@signals.worker_ready.connect
def _start_endpoint(**_: Any) -> None:
    global _endpoint  # noqa: PLW0603 - one endpoint per worker main process
    settings = get_settings()
    if settings.metrics_enabled and _endpoint is None:
        # Pool children come and go (max_tasks_per_child, crashes): merge the
        # files of the dead ones so scrape time and disk stay flat.
        housekeeper().start()
        _endpoint = EndpointServer(settings.metrics_host, settings.metrics_port)
        _endpoint.start()
        log.info("metrics endpoint started", extra={"host": settings.metrics_host, "port": settings.metrics_port})


@signals.worker_shutdown.connect
def _stop_endpoint(**_: Any) -> None:
    housekeeper().stop()
    if _endpoint is not None:
        _endpoint.stop()


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not share the parent's pooled database connections.
    dispose_engines()


@signals.task_prerun.connect
def _task_started_at(task_id: str | None = None, **_: Any) -> None:
    if task_id:
        _task_started[task_id] = time.perf_counter()


@signals.task_postrun.connect
def _task_finished(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    started = _task_started.pop(task_id or "", None)
    if started is not None and task is not None:
        m.TASK_DURATION.labels(task=task.name).observe(time.perf_counter() - started)


@signals.task_failure.connect
def _task_failed(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        m.TASK_FAILURES.labels(task=sender.name).inc()


@signals.task_retry.connect
def _task_retried(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        m.TASK_RETRIES.labels(task=sender.name).inc()
