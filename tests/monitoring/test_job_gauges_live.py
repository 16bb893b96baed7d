"""The job gauges on real workers: promtool finds nothing to say, and several hosts give one answer.

Each test has its own redis-server and PostgreSQL database (conftest.py), so
the windows it claims and the newest window it reads are its own.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from kombu import Connection
from sqlalchemy import Engine, create_engine, func, select

from app.db.models import MetricEvent, ScheduledJobRun
from app.windows import window_start
from tests.integration.test_scheduled_beat import JOBS, SHORT_INTERVALS, every_job_succeeded
from tests.monitoring.support import Prometheus
from tests.monitoring.test_expressions_live import publish
from tests.support.processes import LoggedProcess
from tests.support.services import PostgresDatabase, RedisServer, wait_until
from tests.support.worker import Worker, value
from workers.tasks import events as tasks
from workers.tasks import scheduled

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def promtool() -> str:
    found = shutil.which("promtool")
    assert found is not None, "promtool is not installed: run `make services` (scripts/test-services.sh)"
    return found


def panic(zone: str, firm_id: str, response_time: float, occurred_at: datetime | None = None) -> dict[str, Any]:
    """A completed panic request in `zone` answered by `firm_id`, as record_events takes it."""
    event: dict[str, Any] = {
        "kind": "panic_request",
        "service_type": "security",
        "status": "completed",
        "zone": zone,
        "firm_id": firm_id,
        "response_time": response_time,
    }
    if occurred_at is not None:
        event["occurred_at"] = occurred_at.isoformat()
    return event


def subscription(subscription_id: str) -> dict[str, Any]:
    """A purchase on the family plan that stays active."""
    return {
        "kind": "subscription",
        "subscription_id": subscription_id,
        "plan": "family",
        "action": "purchased",
        "amount": 199.0,
        "currency": "ZAR",
        "expires_at": "2999-01-01T00:00:00+00:00",
    }


def stored_events(engine: Engine) -> int:
    """Events in this test's own database."""
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(MetricEvent)).scalar_one())


def test_promtool_check_metrics_is_clean_once_every_job_has_run(
    own_redis: RedisServer, own_database: PostgresDatabase, processes: list[LoggedProcess], tmp_path: Path
) -> None:
    """Every scheduled job runs with zones, firms and plans to show; `promtool check metrics` says nothing.

    The jobs are sent once each, with no expiry: the beat's runs of one-second jobs expire after
    0.9 s in the queue, and on a loaded machine every one of them could (the beat itself is
    tested in tests/integration/test_scheduled_beat.py).
    """
    env = {"BROKER_URL": own_redis.url, "DATABASE_URL": own_database.url, **SHORT_INTERVALS}
    worker = Worker(env, tmp_path / "worker")
    processes.append(worker)
    worker.start()
    occurred_at = datetime.now(UTC)
    publish(
        own_redis.url,
        tasks.record_events,
        [panic("harbour", "firm-ember", 420.0, occurred_at), subscription("sub-1")],
    )
    engine = create_engine(own_database.url)
    try:
        wait_until(lambda: stored_events(engine) == 2, timeout=60, what="the events stored")
    finally:
        engine.dispose()
    window = window_start(occurred_at, int(SHORT_INTERVALS["PERFORMANCE_WINDOW_SECONDS"])).isoformat()
    with Connection(own_redis.url) as connection:
        for job in JOBS:
            kwargs = {"window_start": window} if job.startswith("aggregate_") else {}
            getattr(scheduled, job).apply_async(kwargs=kwargs, connection=connection)

    def every_gauge_set() -> bool:
        samples = worker.scrape()
        return (
            every_job_succeeded(worker)
            and value(samples, "zone_response_time_p95_seconds", zone="harbour") == 420.0
            and value(samples, "firm_response_time_p50_seconds", firm_id="firm-ember") == 420.0
            and value(samples, "subscriptions_active", plan="family") == 1
        )

    wait_until(every_gauge_set, timeout=120, what=f"every job run and every job gauge set (log: {worker.log_path})")
    exposition = httpx.get(worker.metrics_url, timeout=30).text
    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=exposition, capture_output=True, text=True, check=False
    )
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")


def test_two_hosts_give_the_newest_window_whichever_won_its_claim(
    own_redis: RedisServer, own_database: PostgresDatabase, processes: list[LoggedProcess], tmp_path: Path
) -> None:
    """Host A wins a window, then host B, then A again: the `:newest` rules show each newest window, summed once.

    Both hosts stay up and keep serving their last figures; only which one
    consumes the `scheduled` queue changes (Celery's cancel/add_consumer).
    """
    # A refresh window of a second: each round's subscription refresh is a window of its own.
    env = {"BROKER_URL": own_redis.url, "DATABASE_URL": own_database.url, "SUBSCRIPTION_REFRESH_INTERVAL_SECONDS": "1"}
    hosts = {name: Worker(env, tmp_path / name) for name in ("a", "b")}
    prometheus = Prometheus(tmp_path / "prometheus", targets=[f"127.0.0.1:{w.port}" for w in hosts.values()])
    processes.extend([prometheus, *hosts.values()])
    prometheus.start()
    for worker in hosts.values():
        worker.start_process()
    for worker in hosts.values():
        worker.wait_ready()
    control = Celery("control", broker=own_redis.url, set_as_current=False).control
    engine = create_engine(own_database.url)
    first = window_start(datetime.now(UTC) - timedelta(hours=1), 300)

    def only(name: str) -> None:
        """Let host `name` alone take scheduled jobs."""
        for other, worker in hosts.items():
            verb = control.add_consumer if other == name else control.cancel_consumer
            assert verb("scheduled", destination=[worker.hostname], reply=True, timeout=10), worker.hostname

    def evaluated(expr: str) -> list[float]:
        result = prometheus.query(expr).json()["data"]["result"]
        return [float(r["value"][1]) for r in result]

    def raw(metric: str, **labels: str) -> dict[str, float]:
        return {name: value(worker.scrape(), metric, **labels) for name, worker in hosts.items()}

    # (winner, window, the window's response time, subscriptions bought before its refresh)
    rounds = [("a", 0, 100.0, 1), ("b", 1, 200.0, 2), ("a", 2, 300.0, 3)]
    for step, (winner, offset, response_time, subscriptions) in enumerate(rounds):
        only(winner)
        start = first + timedelta(minutes=5 * offset)
        publish(
            own_redis.url,
            tasks.record_events,
            [panic("harbour", "firm-ember", response_time, start + timedelta(seconds=30)), subscription(f"sub-{step}")],
        )
        wait_until(
            lambda step=step: stored_events(engine) == 2 * (step + 1), timeout=60, what=f"round {step}'s events stored"
        )
        publish(own_redis.url, scheduled.aggregate_zone_performance, start.isoformat())
        publish(own_redis.url, scheduled.aggregate_firm_performance, start.isoformat())
        publish(own_redis.url, scheduled.refresh_subscription_metrics)
        wait_until(
            lambda rt=response_time, n=subscriptions: (
                evaluated('zone:zone_response_time_p95_seconds:newest{zone="harbour"}') == [rt]
                and evaluated('firm_id:firm_response_time_p50_seconds:newest{firm_id="firm-ember"}') == [rt]
                and evaluated("sum(plan:subscriptions_active:newest)") == [n]
            ),
            timeout=60,
            what=f"round {step}: the newest window's figures from host {winner} in Prometheus",
        )
        shown = raw("zone_response_time_p95_seconds", zone="harbour")
        assert shown[winner] == response_time
        if step:  # the loser keeps the window it won before: summed over hosts it would double count
            loser = next(name for name in hosts if name != winner)
            assert shown[loser] == rounds[step - 1][2]
            plans = raw("subscriptions_active", plan="family")
            assert plans[loser] == rounds[step - 1][3]
            assert sum(plans.values()) > subscriptions

    with engine.connect() as connection:
        claims = connection.execute(select(ScheduledJobRun.job, ScheduledJobRun.window_start)).all()
    performance = [claim for claim in claims if claim.job.startswith("aggregate_")]
    assert len(performance) == len(set(performance)) == 2 * len(rounds)  # each window ran once
    engine.dispose()
