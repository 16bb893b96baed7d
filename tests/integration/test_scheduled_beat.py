"""A real `celery beat` fires every scheduled job at a real worker: each runs once per window, its gauges appear."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, select

from app.config import get_settings
from app.db.models import LabelValue, MetricEvent, PerformanceSnapshot, ScheduledJobRun
from beat_schedule import intervals
from tests.integration.conftest import WorkerFactory
from tests.support.beat import Beat
from tests.support.services import RedisServer, wait_until
from tests.support.worker import Worker, embedded_environment, value
from workers.tasks import events as tasks

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS = tuple(intervals(get_settings()))
# Every job every one to three seconds. Retention of a century: the test
# database is shared by the whole run, and this cleanup must delete nothing.
SHORT_INTERVALS = {
    "HEALTH_REFRESH_INTERVAL_SECONDS": "1",
    "SUBSCRIPTION_REFRESH_INTERVAL_SECONDS": "1",
    "PERFORMANCE_WINDOW_SECONDS": "2",
    # A window is aggregated a second after it ends: events stored just after it still land in it.
    "PERFORMANCE_GRACE_SECONDS": "1",
    # A minute of windows: the events are stored before the beats have booted, which on a loaded
    # machine takes over ten seconds; a shorter horizon leaves their window behind it.
    "PERFORMANCE_BACKFILL_WINDOWS": "30",
    "CLEANUP_INTERVAL_SECONDS": "3",
    "EVENT_RETENTION_DAYS": "36500",
    "SNAPSHOT_RETENTION_DAYS": "36500",
    "ROLLUP_RETENTION_DAYS": "36500",
}


BeatFactory = Callable[[Mapping[str, str]], Beat]


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[BeatFactory]:
    """Start `celery beat` processes; all are stopped afterwards."""
    beats: list[Beat] = []

    def start(env: Mapping[str, str]) -> Beat:
        beats.append(Beat(env, tmp_path / f"beat{len(beats)}").start())
        return beats[-1]

    yield start
    for beat in beats:
        beat.stop()


@pytest.fixture
def forget_afterwards(pg_engine: Engine, unique: str) -> Iterator[None]:
    """Remove what the test's zone and firm left in the shared database (label caps count them)."""
    yield
    subjects = (unique, f"firm-{unique}")
    with pg_engine.begin() as connection:
        connection.execute(delete(LabelValue).where(LabelValue.value.in_(subjects)))
        connection.execute(delete(PerformanceSnapshot).where(PerformanceSnapshot.subject.in_(subjects)))
        connection.execute(delete(MetricEvent).where(MetricEvent.zone == unique))


def every_job_succeeded(worker: Worker) -> bool:
    samples = worker.scrape()
    return all(value(samples, "metrics_job_last_success_timestamp_seconds", scheduled_job=job) > 0 for job in JOBS)


def claims_since(engine: Engine, job: str, since: datetime) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(ScheduledJobRun)
        query = query.where(ScheduledJobRun.job == job, ScheduledJobRun.started_at >= since)
        return int(connection.execute(query).scalar_one())


@pytest.mark.usefixtures("forget_afterwards")
def test_two_beats_and_a_worker_run_every_job_once_per_window(
    start_worker: WorkerFactory, start_beat: BeatFactory, redis_server: RedisServer, pg_engine: Engine, unique: str
) -> None:
    """Two beats fire each job twice per interval; each window runs once, and every job's last success shows."""
    started = datetime.now(UTC) - timedelta(seconds=1)
    worker = start_worker(**SHORT_INTERVALS)
    for _ in range(3):
        tasks.record_panic_request_metrics.delay(
            service_type="medical", status="completed", zone=unique, firm_id=f"firm-{unique}", response_time=90.0
        )
    env = {
        "BROKER_URL": redis_server.url,
        "DATABASE_URL": pg_engine.url.render_as_string(hide_password=False),
        **SHORT_INTERVALS,
    }
    beats = [start_beat(env), start_beat(env)]
    try:
        wait_until(lambda: every_job_succeeded(worker), timeout=60, what="every job's last success on /metrics")
        with pg_engine.connect() as connection:
            wait_until(
                lambda: (
                    connection.execute(
                        select(func.sum(PerformanceSnapshot.completed)).where(PerformanceSnapshot.subject == unique)
                    ).scalar_one()
                    == 3
                ),
                timeout=30,
                what="the zone's three completions in its snapshots",
            )
    finally:
        for beat in beats:
            beat.stop()

    # Quiet now: every window a job reports done is one claim row, never two runs of one window.
    for job in JOBS:
        wait_until(
            lambda job=job: (
                value(worker.scrape(), "metrics_job_windows_total", scheduled_job=job, outcome="done")
                == claims_since(pg_engine, job, started)
            ),
            timeout=30,
            what=f"{job}: windows done equal to windows claimed",
        )
    samples = worker.scrape()
    assert (("zone_completion_ratio", frozenset({("zone", unique)}))) in samples
    assert value(samples, "dependency_up", dependency="broker") == 1
    assert value(samples, "dependency_up", dependency="database") == 1
    assert value(samples, "database_connections", state="in_use") >= 1
    assert value(samples, "redis_connected_clients", address=f"127.0.0.1:{redis_server.port}") >= 1
    assert ("celery_queue_length", frozenset({("queue", "scheduled")})) in samples
    assert value(samples, "metrics_job_failures_total", scheduled_job="aggregate_zone_performance") == 0
    ratio = samples[("zone_completion_ratio", frozenset({("zone", unique)}))]
    assert ratio == 1.0 or math.isnan(ratio)


def test_make_run_beat_runs_every_job_on_the_embedded_default(tmp_path: Path) -> None:
    """`celery worker --beat` with no server (SQLite, filesystem broker) runs every job without error."""
    env = {**embedded_environment(tmp_path), **SHORT_INTERVALS}
    worker = Worker(env, tmp_path / "worker", extra=("--beat", "--schedule", str(tmp_path / "celerybeat-schedule")))
    worker.start()
    try:
        wait_until(lambda: every_job_succeeded(worker), timeout=60, what="every job's last success on /metrics")
        samples = worker.scrape()
        failures = {job: value(samples, "metrics_job_failures_total", scheduled_job=job) for job in JOBS}
        assert all(count == 0 for count in failures.values()), worker.log()[-3000:]
        assert value(samples, "dependency_up", dependency="database") == 1
        assert ("celery_queue_length", frozenset({("queue", "events")})) in samples
    finally:
        worker.stop()
