"""Worker signals: the multiprocess directory, the endpoint thread, the consuming probe, the disk gate."""

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
from app.http.server import EndpointServer, housekeeper, refuse_unsafe_exposure
from app.metrics import multiproc_dir
from app.metrics.multiproc import wipe_directory
from app.metrics.writers import require_values_in_directory
from workers.celery_app import app
from workers.consumer_gate import MetricsDiskGate

log = logging.getLogger(__name__)

_endpoint: EndpointServer | None = None

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


@app.task(name=PROBE_TASK)
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
        _probe.start()


@signals.worker_shutdown.connect
def _stop_probe(**_: Any) -> None:
    if _probe is not None:
        _probe.stop()


@signals.worker_init.connect
def _values_in_the_directory(**_: Any) -> None:
    # The main process counts too (the endpoint's own series, failures at a
    # hard time limit), and its pool children inherit its value class. Before
    # the pool starts: a refused worker consumes nothing. SystemExit, because
    # Celery logs and ignores any other exception a signal handler raises.
    try:
        require_values_in_directory()
    except RuntimeError as exc:
        raise SystemExit(f"panic-metrics: refusing to start: {exc}") from exc


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


_gate: MetricsDiskGate | None = None


@signals.worker_ready.connect
def _start_disk_gate(sender: Any = None, **_: Any) -> None:
    global _gate  # noqa: PLW0603 - one gate per worker main process
    if sender is None or _gate is not None:
        return
    # Celery sends worker_ready from its consumer: the task queues it consumes, not the probe's own.
    probe_queue = _probe.queue if _probe is not None else None
    queues = [name for name in sender.app.amqp.queues.consume_from if name != probe_queue]
    _gate = MetricsDiskGate(sender, multiproc_dir(), queues)
    _gate.start()


@signals.worker_shutdown.connect
def _stop_disk_gate(**_: Any) -> None:
    if _gate is not None:
        _gate.stop()


@signals.worker_ready.connect
def _start_endpoint(**_: Any) -> None:
    global _endpoint  # noqa: PLW0603 - one endpoint per worker main process
    settings = get_settings()
    if settings.metrics_enabled and _endpoint is None:
        # Pool children come and go (max_tasks_per_child, crashes): merge the
        # files of the dead ones so scrape time and disk stay flat.
        housekeeper().start()
        consuming = _probe.status if _probe is not None else None
        disk = _gate.status if _gate is not None else None
        _endpoint = EndpointServer(settings.metrics_host, settings.metrics_port, consuming=consuming, disk=disk)
        _endpoint.start()
        log.info("metrics endpoint started", extra={"host": settings.metrics_host, "port": settings.metrics_port})


@signals.worker_shutdown.connect
def _stop_endpoint(**_: Any) -> None:
    housekeeper().stop()
    if _endpoint is not None:
        _endpoint.stop()


@signals.worker_process_init.connect
def _child_values_in_the_directory(**_: Any) -> None:
    # Inherited from the main process, checked again: a child counts every task it runs.
    try:
        require_values_in_directory()
    except RuntimeError as exc:
        raise SystemExit(f"panic-metrics: pool child refusing to start: {exc}") from exc


@signals.worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    # A forked child must not share the parent's pooled database connections.
    dispose_engines()
