"""Metrics: definitions, counting, the multiprocess directory and its exposition (no HTTP here).

prometheus_client picks its value class once, when `prometheus_client.values`
is first imported, from PROMETHEUS_MULTIPROC_DIR: imported before the
variable is set, every metric of the process lives in its own memory and
never reaches the directory, silently. So the entry points (the Celery app
module, the `panic-metrics` command) import this package before anything
that imports prometheus_client (the client package does), this package sets
the variable from the settings when the environment has not.

prometheus_client may have been imported without it all the same (`celery`
loads Flower's command before `-A` imports our app): a process that only
inspects, controls or publishes runs anyway, and one that writes metrics
checks its values when it starts (app.metrics.writers).
"""

from __future__ import annotations

import os
from pathlib import Path

from app.config import load_settings
from app.metrics.guards import take_lease  # no prometheus_client import there

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def multiproc_dir() -> Path:
    """The directory every worker process of this host writes its metrics to."""
    return Path(os.environ[MULTIPROC_DIR_VARIABLE])


def _point_prometheus_client_at_the_directory() -> None:
    if MULTIPROC_DIR_VARIABLE not in os.environ:
        # load_settings, not get_settings: the latter imports the client package, and with it prometheus_client.
        os.environ[MULTIPROC_DIR_VARIABLE] = str(load_settings().prometheus_multiproc_dir.resolve())
    directory = multiproc_dir()
    directory.mkdir(parents=True, exist_ok=True)
    # Before any metric file of this process exists: a compactor may merge a
    # process's files only once it can take this lease (app.metrics.guards).
    take_lease(directory)


_point_prometheus_client_at_the_directory()
