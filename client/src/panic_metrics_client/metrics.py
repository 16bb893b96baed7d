"""The client's own metrics, in the web app's prometheus_client registry when it has one."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

# Optional: a web app without prometheus_client still gets the client's `stats()`.
HAS_PROMETHEUS = importlib.util.find_spec("prometheus_client") is not None
if HAS_PROMETHEUS or TYPE_CHECKING:
    import prometheus_client

    from panic_metrics_client import metric_files

    # Before any metric of ours exists: on a full disk the library's own files would kill the process (SIGBUS).
    metric_files.install()

_BY_REGISTRY: dict[int, ClientMetrics] = {}
_FAILED: list[bool] = []
logger = logging.getLogger("panic_metrics_client")


class ClientMetrics:
    """Events sent, spooled and dropped, the queue depth and the send latency."""

    def __init__(self, registry: Any) -> None:
        self.events = prometheus_client.Counter(
            "panic_metrics_client_events_total",
            "Events by outcome: sent, spooled (broker away), dropped (queue or spool full), invalid (refused).",
            ["outcome"],
            registry=registry,
        )
        self.queue_depth = prometheus_client.Gauge(
            "panic_metrics_client_queue_depth",
            "Events in memory waiting for the sender.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.spool_events = prometheus_client.Gauge(
            "panic_metrics_client_spool_events",
            "Events waiting in this process's spool for the broker.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        # A publish is a local round trip (~0.1-1 ms); seconds mean a sick broker, cut at the send timeout.
        self.send_seconds = prometheus_client.Histogram(
            "panic_metrics_client_send_duration_seconds",
            "Time to publish one message to the broker.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )

    def count(self, outcome: str, events: int) -> None:
        """Count events by outcome; a broken registry never reaches the caller."""
        with _guarded():
            self.events.labels(outcome=outcome).inc(events)

    def depths(self, queued: int, spooled: int) -> None:
        """What waits in memory and in the spool."""
        with _guarded():
            self.queue_depth.set(queued)
            self.spool_events.set(spooled)

    def sent(self, seconds: float) -> None:
        """One publish took `seconds`."""
        with _guarded():
            self.send_seconds.observe(seconds)


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    # e.g. PROMETHEUS_MULTIPROC_DIR set to a folder that does not exist: the metric is lost, not the event.
    try:
        yield
    except Exception:
        if not _FAILED:
            _FAILED.append(True)
            logger.exception("panic_metrics_client: cannot update its own metrics")


def metrics_for(registry: Any = None, *, enabled: bool = True) -> ClientMetrics | None:
    """The client's metrics in `registry` (default: prometheus_client's), made once per registry."""
    if not HAS_PROMETHEUS or not enabled:
        return None
    registry = registry if registry is not None else prometheus_client.REGISTRY
    metrics = _BY_REGISTRY.get(id(registry))
    if metrics is None:
        metrics = _BY_REGISTRY[id(registry)] = ClientMetrics(registry)
    return metrics


def metric_file_counts() -> dict[str, int]:
    """Metric writes this process's files could not take (full disk), and values still waiting in memory."""
    if not HAS_PROMETHEUS:
        return {"metric_writes_failed": 0, "metric_values_waiting": 0}
    status = metric_files.status()
    return {"metric_writes_failed": status.failed_writes, "metric_values_waiting": status.waiting}
