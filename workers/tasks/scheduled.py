"""Scheduled jobs (queue `scheduled`, fired by beat_schedule.py): a few lines each over app.jobs.

An operator re-runs a performance window after late events with
`panic-metrics rerun-window --job zone --start 2026-11-24T12:00:00Z`, or
`aggregate_zone_performance.delay(window_start="2026-11-24T12:00:00Z")`
(likewise for firms): that window's snapshots, and the gauges if it is the
newest window, are replaced.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from app import jobs
from app.metrics import definitions as m
from app.metrics import multiproc_dir
from panic_metrics_client.messages import QUEUES
from workers.celery_app import app
from workers.tasks.base import MetricsTask


class ScheduledTask(MetricsTask):
    """Records each run's duration, last success and failures under the job's name.

    Like every task it is acks_late (the app's configuration): a worker lost
    mid-job has its message redelivered, and the window claim makes the
    second delivery skip what the first finished.
    """

    abstract = True

    @property
    def job(self) -> str:
        """The job's name: the task name without `panic_metrics.scheduled.`."""
        return str(self.name).rsplit(".", 1)[-1]

    def owner(self) -> str:
        """Who holds the job's window claims: host, process and task id."""
        return f"{jobs.default_owner()}:{self.request.id or 'direct'}"

    def scheduled_at(self) -> datetime | None:
        """When the beat sent this run (the `published_at` header it stamps): the window it is for."""
        stamp = getattr(self.request, "published_at", None)
        return datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, int | float) else None

    def run_succeeded(self, seconds: float) -> None:
        """The job's duration and last success."""
        m.JOB_DURATION.labels(scheduled_job=self.job).set(seconds)
        m.JOB_LAST_SUCCESS.labels(scheduled_job=self.job).set(time.time())

    def run_failed(self) -> None:
        """The job's failures."""
        m.JOB_FAILURES.labels(scheduled_job=self.job).inc()


def _window(window_start: str | None) -> datetime | None:
    # ISO 8601; a naive time is taken as UTC, and it is aligned down to its window.
    return None if window_start is None else datetime.fromisoformat(window_start)


@app.task(base=ScheduledTask, bind=True, name="panic_metrics.scheduled.refresh_health_metrics")
def refresh_health_metrics(self: ScheduledTask) -> dict[str, Any]:
    """Dependencies up, database connections, Redis figures, queue depths and ages."""
    return jobs.refresh_health(queues=QUEUES, owner=self.owner(), scheduled_at=self.scheduled_at()).as_dict()


@app.task(base=ScheduledTask, bind=True, name="panic_metrics.scheduled.refresh_subscription_metrics")
def refresh_subscription_metrics(self: ScheduledTask) -> dict[str, Any]:
    """Active subscriptions by plan."""
    return jobs.refresh_subscriptions(owner=self.owner(), scheduled_at=self.scheduled_at()).as_dict()


@app.task(base=ScheduledTask, bind=True, name="panic_metrics.scheduled.aggregate_zone_performance")
def aggregate_zone_performance(self: ScheduledTask, window_start: str | None = None) -> dict[str, Any]:
    """The zone performance windows that are due, or the one `window_start` names."""
    return jobs.aggregate_performance(subject_type="zone", window=_window(window_start), owner=self.owner()).as_dict()


@app.task(base=ScheduledTask, bind=True, name="panic_metrics.scheduled.aggregate_firm_performance")
def aggregate_firm_performance(self: ScheduledTask, window_start: str | None = None) -> dict[str, Any]:
    """The firm performance windows that are due, or the one `window_start` names."""
    return jobs.aggregate_performance(subject_type="firm", window=_window(window_start), owner=self.owner()).as_dict()


@app.task(base=ScheduledTask, bind=True, name="panic_metrics.scheduled.cleanup_old_metrics")
def cleanup_old_metrics(self: ScheduledTask) -> dict[str, Any]:
    """Roll up and delete what is past retention; compact this host's metric files."""
    return jobs.cleanup_old_metrics(
        owner=self.owner(), scheduled_at=self.scheduled_at(), metrics_dir=multiproc_dir()
    ).as_dict()
