"""A process that writes metrics: its values go to the multiprocess directory, or it does not start.

prometheus_client picks its value class once, when `prometheus_client.values`
is first imported, from PROMETHEUS_MULTIPROC_DIR. `celery` loads its command
plugins before `-A` imports our app, and Flower's imports prometheus_client,
so in every `celery` process started without the variable it has picked
single-process values before app.metrics could set it. Most such processes
(status, inspect, control, call, purge, events, flower, a shell calling
.delay()) write no metric of ours and must run as they are. The ones that
write (the worker's main process and pool children, the standalone endpoint,
a task body) call `require_values_in_directory` when they start.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import values
from prometheus_client.metrics import MetricWrapperBase

from app.metrics import MULTIPROC_DIR_VARIABLE
from app.metrics import definitions as m
from app.metrics.multiproc import writable
from panic_metrics_client import metric_files


def _series_in_memory() -> list[str]:
    # Every metric of ours has labels, and prometheus_client makes a series'
    # value when .labels() is first called: a metric with no sample yet holds
    # no value of either class.
    metrics = (value for value in vars(m).values() if isinstance(value, MetricWrapperBase))
    return sorted({family.name for metric in metrics for family in metric.collect() if family.samples})


def require_values_in_directory() -> None:
    """Make this process's metrics go to the multiprocess directory; refuse if some already went to memory.

    app.metrics has set the variable by now. If prometheus_client picked its
    values before that and no series of ours exists yet, it takes the class
    it would have picked with the variable set before Python started (as it
    does itself, from the same variable; ours, whose files reserve their space:
    panic_metrics_client.metric_files); a series made before that would
    stay in this process's memory, never scraped, so the process stops.
    """
    if values.ValueClass is not values.MutexValue:
        # Multiprocess already: make sure it is the class whose files cannot SIGBUS on a full disk.
        metric_files.install()
        return
    recorded = _series_in_memory()
    if recorded:
        raise RuntimeError(
            f"prometheus_client was imported before {MULTIPROC_DIR_VARIABLE} was set, and this process "
            f"already recorded {', '.join(recorded)} in its own memory, which never reaches the multiprocess "
            f"directory: set {MULTIPROC_DIR_VARIABLE} before the process starts"
        )
    values.ValueClass = metric_files.value_class()


def room_for_counts(directory: Path) -> bool:
    """Whether this process can count what it stores now: no value waits for space and the directory has room.

    Values that waited are written first (space may be back). "Room" is what
    /health and the worker's consumer gate call writable (app.metrics.multiproc),
    so a pool child refuses an event exactly when its worker stops consuming.
    """
    return metric_files.write_waiting() and writable(directory)
