"""The beat schedule and the scheduled tasks: routing, expiry, names, and the job metrics each run records."""

from __future__ import annotations

import os

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from app.config import get_settings
from beat_schedule import build_beat_schedule, intervals
from tests.support.services import PostgresDatabase
from workers.celery_app import SCHEDULED_QUEUE, app
from workers.tasks import scheduled


def sample(name: str, **labels: str) -> float:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return registry.get_sample_value(name, labels) or 0.0


def test_every_job_goes_to_the_scheduled_queue_and_expires_before_its_next_run() -> None:
    """Each entry names a registered task, goes to `scheduled`, and expires within its interval."""
    settings = get_settings().model_copy(update={"performance_window_seconds": 600, "cleanup_interval_seconds": 3600})
    schedule = build_beat_schedule(settings, queue=SCHEDULED_QUEUE)
    assert set(schedule) == set(intervals(settings))
    for job, entry in schedule.items():
        assert entry["task"] == f"panic_metrics.scheduled.{job}"
        assert entry["task"] in app.tasks
        assert entry["options"]["queue"] == SCHEDULED_QUEUE
        assert 0 < entry["options"]["expires"] < entry["schedule"].seconds
    assert schedule["aggregate_zone_performance"]["schedule"].seconds == 600
    assert app.conf.task_routes["panic_metrics.scheduled.*"]["queue"] == SCHEDULED_QUEUE


def test_scheduled_tasks_acknowledge_late() -> None:
    """A worker lost mid-job gets its message redelivered (the window claim makes that safe)."""
    for task in (scheduled.refresh_health_metrics, scheduled.aggregate_firm_performance, scheduled.cleanup_old_metrics):
        assert task.acks_late
        assert task.reject_on_worker_lost


@pytest.mark.integration
def test_operator_rerun_of_a_window_records_success(pg_database: PostgresDatabase) -> None:
    """`aggregate_zone_performance.delay(window_start=...)` runs that aligned window and sets the last success."""
    before = sample("metrics_job_last_success_timestamp_seconds", scheduled_job="aggregate_zone_performance")
    result = scheduled.aggregate_zone_performance.apply(kwargs={"window_start": "2001-03-04T12:02:30Z"}).get()
    assert result["done"] == ["2001-03-04T12:00:00+00:00"]
    assert sample("metrics_job_last_success_timestamp_seconds", scheduled_job="aggregate_zone_performance") > before


@pytest.mark.integration
def test_a_failing_run_is_counted_and_does_not_set_last_success(pg_database: PostgresDatabase) -> None:
    """A bad window_start fails the run: metrics_job_failures_total goes up by one."""
    failures = sample("metrics_job_failures_total", scheduled_job="aggregate_firm_performance")
    success = sample("metrics_job_last_success_timestamp_seconds", scheduled_job="aggregate_firm_performance")
    outcome = scheduled.aggregate_firm_performance.apply(kwargs={"window_start": "yesterday at noon"})
    assert outcome.failed()
    assert sample("metrics_job_failures_total", scheduled_job="aggregate_firm_performance") == failures + 1
    assert sample("metrics_job_last_success_timestamp_seconds", scheduled_job="aggregate_firm_performance") == success
