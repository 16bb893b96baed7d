"""Worker signals: the multiprocess directory, the endpoint thread, task metrics."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

from app.config import get_settings
from app.db.session import dispose_engines
from app.metrics import definitions as m
from app.metrics.endpoint import EndpointServer, housekeeper, multiproc_dir, refuse_unsafe_exposure
from app.metrics.multiproc import wipe_directory

log = logging.getLogger(__name__)

_endpoint: EndpointServer | None = None
_task_started: dict[str, float] = {}


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
