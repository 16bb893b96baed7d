"""Metric definitions, the multiprocess registry and the HTTP endpoint.

prometheus_client picks its multiprocess value class when it is first
imported, from PROMETHEUS_MULTIPROC_DIR, so this package sets that variable
from the settings before anything below imports prometheus_client.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.config import get_settings
from app.metrics.guards import take_lease  # no prometheus_client import there


def _point_prometheus_client_at_the_directory() -> None:
    directory = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", str(get_settings().prometheus_multiproc_dir.resolve())
    )
    Path(directory).mkdir(parents=True, exist_ok=True)
    # Before any metric file of this process exists: a compactor may merge a
    # process's files only once it can take this lease (app.metrics.guards).
    take_lease(Path(directory))


_point_prometheus_client_at_the_directory()
