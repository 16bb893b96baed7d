"""The health refresh and the business gauges: what each reports, on the embedded default and on real Redis."""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

from app.aggregations.gauges import set_performance_gauges
from app.aggregations.performance import PerformanceRow
from app.config import Settings, get_settings
from app.db.models import LabelValue
from app.db.session import session_scope
from app.health import collect_health, queue_stats
from app.jobs import refresh_health
from tests.support.services import RedisServer
from workers.celery_app import EVENTS_QUEUE, SCHEDULED_QUEUE

UNREACHABLE_DATABASE = "postgresql+psycopg://nobody:nothing@127.0.0.1:1/none"


def sample(name: str, **labels: str) -> float | None:
    """A value from this process's multiprocess directory, as /metrics would show it."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return registry.get_sample_value(name, labels)


def embedded(tmp_path: Path) -> Settings:
    return get_settings().model_copy(update={"broker_url": "filesystem://", "broker_folder": tmp_path / "broker"})


def test_default_queues_are_the_celery_apps() -> None:
    """The queues app.health watches by default are the ones the Celery app declares."""
    from app.health import DEFAULT_QUEUES

    assert DEFAULT_QUEUES == (EVENTS_QUEUE, SCHEDULED_QUEUE)


def test_filesystem_broker_queue_depth_and_oldest_age(tmp_path: Path) -> None:
    """On the embedded broker each queue's depth is its message files, its age the oldest file's."""
    settings = embedded(tmp_path)
    folder = tmp_path / "broker" / "queue"
    folder.mkdir(parents=True)
    now = time.time()
    for i, (queue, age) in enumerate([("events", 120), ("events", 30), ("events", 5), ("scheduled", 1)]):
        path = folder / f"{i}_{uuid.uuid4()}.{queue}.msg"
        path.write_text("{}")
        os.utime(path, (now - age, now - age))
    stats = queue_stats(settings, ("events", "scheduled", "other"))
    assert [stats[q].messages for q in ("events", "scheduled", "other")] == [3, 1, 0]
    assert stats["events"].oldest_age_seconds is not None
    assert stats["events"].oldest_age_seconds >= 120
    assert stats["other"].oldest_age_seconds is None


def test_sqlite_reports_its_pool_and_no_redis(sqlite_engine: Engine, tmp_path: Path) -> None:
    """The embedded default reports the SQLite pool's connections and no Redis figures at all."""
    report = collect_health(settings=embedded(tmp_path), engine=sqlite_engine)
    assert report.dependencies == {"broker": True, "database": True}
    assert report.database_connections is not None
    assert report.database_connections["in_use"] == 0
    assert report.redis is None


@pytest.mark.integration
def test_postgresql_reports_connections_from_pg_stat_activity(pg_engine: Engine, tmp_path: Path) -> None:
    """On PostgreSQL the connections come from pg_stat_activity: at least the one asking is in use."""
    with pg_engine.connect():  # one more connection, idle
        report = collect_health(settings=embedded(tmp_path), engine=pg_engine)
    assert report.database_connections is not None
    assert report.database_connections["in_use"] >= 1
    assert report.database_connections["idle"] >= 1


def test_health_refresh_reports_a_database_it_cannot_reach(tmp_path: Path) -> None:
    """With the database down the refresh runs unclaimed and says so: dependency_up{database} is 0."""
    engine = create_engine(UNREACHABLE_DATABASE, connect_args={"connect_timeout": 2})
    result = refresh_health(
        settings=embedded(tmp_path), engine=engine, session_factory=lambda: session_scope(engine), queues=("events",)
    )
    assert result.detail["report"]["status"] == "degraded"
    assert sample("dependency_up", dependency="database") == 0
    assert sample("dependency_up", dependency="broker") == 1
    assert sample("celery_queue_length", queue="events") == 0


def test_health_refresh_marks_its_figures_with_the_hosts_clock_even_with_the_database_down(tmp_path: Path) -> None:
    """The refresh_health_metrics mark the `queue:*:newest` rules read is set, by this host's clock, as it finishes."""
    engine = create_engine(UNREACHABLE_DATABASE, connect_args={"connect_timeout": 2})
    before = time.time()
    refresh_health(
        settings=embedded(tmp_path), engine=engine, session_factory=lambda: session_scope(engine), queues=("events",)
    )
    marked = sample("metrics_job_gauges_computed_timestamp_seconds", scheduled_job="refresh_health_metrics")
    assert marked is not None
    assert before <= marked <= time.time()


@pytest.mark.integration
def test_redis_queue_depth_counts_priority_sub_queues_and_the_oldest_message(redis_server: RedisServer) -> None:
    """Messages in a queue's priority sub-lists count; the oldest age is the oldest tail's published_at."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    now = time.time()

    def message(age: float) -> str:
        return json.dumps({"body": "", "headers": {"published_at": now - age}, "properties": {}})

    client = redis.Redis.from_url(redis_server.url)
    client.lpush(queue, message(10), message(5))  # LPUSH: the first pushed is the oldest, at the tail
    client.lpush(f"{queue}\x06\x169", message(300))
    settings = get_settings().model_copy(update={"broker_url": redis_server.url})
    try:
        stats = queue_stats(settings, (queue,))[queue]
        report = collect_health(settings=settings, engine=create_engine("sqlite://"), queues=(queue,))
    finally:
        client.delete(queue, f"{queue}\x06\x169")
    assert stats.messages == 3
    assert stats.oldest_age_seconds is not None
    assert stats.oldest_age_seconds >= 300
    assert report.redis is not None
    assert report.redis.connected_clients >= 1
    assert report.redis.used_memory_bytes > 0
    assert "password" not in report.redis.address


def test_performance_gauges_show_the_window_and_nan_for_quiet_zones(db_session: Session) -> None:
    """Zones in the window get their figures; admitted zones without requests get NaN, not stale values."""
    busy, quiet = f"busy-{uuid.uuid4().hex[:6]}", f"quiet-{uuid.uuid4().hex[:6]}"
    db_session.add_all([LabelValue(dimension="zone", value=busy), LabelValue(dimension="zone", value=quiet)])
    db_session.flush()
    rows = [PerformanceRow(busy, 4, 3, 0, 1, 120.0, 300.0)]
    set_performance_gauges(db_session, subject_type="zone", rows=rows, computed_at=1_000.0)
    assert sample("zone_response_time_p95_seconds", zone=busy) == 300.0
    assert sample("zone_response_time_p50_seconds", zone=busy) == 120.0
    assert sample("zone_completion_ratio", zone=busy) == 0.75
    assert sample("zone_prank_ratio", zone=busy) == 0.25
    assert math.isnan(sample("zone_completion_ratio", zone=quiet) or 0.0)
    assert sample("metrics_job_gauges_computed_timestamp_seconds", scheduled_job="aggregate_zone_performance") == 1e3


def test_firm_gauges_admit_new_firms_under_the_cap(db_session: Session) -> None:
    """Firms are admitted as label values by the aggregation itself and show under firm_id."""
    firm = f"firm-{uuid.uuid4().hex[:6]}"
    set_performance_gauges(
        db_session, subject_type="firm", rows=[PerformanceRow(firm, 1, 1, 0, 0, 42.0, 42.0)], computed_at=1_000.0
    )
    assert sample("firm_response_time_p50_seconds", firm_id=firm) == 42.0
    assert sample("firm_completion_ratio", firm_id=firm) == 1.0


@pytest.mark.integration
def test_a_probe_that_fails_shows_nan_and_down_and_is_counted(sqlite_engine: Engine, tmp_path: Path) -> None:
    """Redis (the broker) and the database answer one refresh and not the next: no gauge keeps its last value.

    `dependency_up` goes to 0 (redis included), every figure that could not
    be read goes to NaN, and each failed probe is counted.
    """
    server = RedisServer(tmp_path / "redis")
    server.start()
    settings = get_settings().model_copy(update={"broker_url": server.url, "redis_url": None})
    address = f"127.0.0.1:{server.port}"
    figures = [
        ("redis_connected_clients", {"address": address}),
        ("redis_memory_used_bytes", {"address": address}),
        ("celery_queue_length", {"queue": "events"}),
        ("celery_queue_oldest_message_age_seconds", {"queue": "events"}),
        ("database_connections", {"state": "in_use"}),
    ]
    try:
        refresh_health(settings=settings, engine=sqlite_engine, queues=("events",), claim=False)
        assert sample("dependency_up", dependency="redis") == 1
        for name, labels in figures:
            reading = sample(name, **labels)
            assert reading is not None
            assert not math.isnan(reading), name
    finally:
        server.stop()
    failures = {probe: sample("metrics_health_probe_failures_total", probe=probe) or 0 for probe in ("redis", "broker")}
    unreachable = create_engine(UNREACHABLE_DATABASE, connect_args={"connect_timeout": 2})
    result = refresh_health(settings=settings, engine=unreachable, queues=("events",), claim=False)
    assert result.detail["report"]["dependencies"] == {"broker": False, "database": False, "redis": False}
    for dependency in ("broker", "database", "redis"):
        assert sample("dependency_up", dependency=dependency) == 0
    for name, labels in figures:
        value = sample(name, **labels)
        assert value is not None
        assert math.isnan(value), name
    for probe, before in failures.items():
        assert sample("metrics_health_probe_failures_total", probe=probe) == before + 1


@pytest.mark.integration
def test_the_redis_at_redis_url_has_a_dependency_up_series(sqlite_engine: Engine, redis_server: RedisServer) -> None:
    """REDIS_URL (apart from the broker) is a dependency of its own: dependency_up{dependency="redis"}."""
    settings = get_settings().model_copy(update={"broker_url": "memory://", "redis_url": redis_server.url})
    report = collect_health(settings=settings, engine=sqlite_engine, queues=())
    assert report.dependencies["redis"] is True
    refresh_health(settings=settings, engine=sqlite_engine, queues=(), claim=False)
    assert sample("dependency_up", dependency="redis") == 1
