"""Every PromQL expression of the rules and dashboards, on a real Prometheus that scraped real workers.

The scenario (deterministic, no timing luck):
1. a worker whose database is unreachable (TASK_MAX_RETRIES=1) takes a few
   event messages and a scheduled job alone: retries, dead letters (in two
   batches, so EventsDeadLettered fires and ALERTS has a series), task and
   job failures, `dependency_up{dependency="database"} == 0`; then it is told
   to stop consuming (Celery's cancel_consumer) but keeps serving /metrics;
2. a healthy worker takes one event of every kind, a duplicate and two bad
   payloads, then the demo generator's stream (`panic-metrics demo`), while a
   real beat runs every scheduled job on short intervals.
Prometheus scrapes both every second and evaluates the real rule files.
The checker (tests/monitoring/promql.py) says what "passes" means.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from celery import Celery
from kombu import Connection

from tests.integration.test_scheduled_beat import SHORT_INTERVALS, every_job_succeeded
from tests.monitoring.promql import Checker, Outcome, all_expressions, known_names
from tests.monitoring.support import Prometheus
from tests.support.beat import Beat
from tests.support.processes import LoggedProcess
from tests.support.services import PostgresDatabase, RedisServer, free_port, wait_until
from tests.support.worker import Worker, total
from workers.tasks import events as tasks
from workers.tasks import scheduled

pytestmark = [pytest.mark.integration, pytest.mark.slow]

UNREACHABLE_DATABASE = f"postgresql+psycopg://nobody:nothing@127.0.0.1:{free_port()}/nothing"

#: One event of every kind, so every series exists whatever the demo's random stream holds.
ONE_OF_EACH = [
    {"kind": "panic_request", "service_type": "fire", "status": "completed", "zone": "harbour",
     "firm_id": "firm-ember-fire", "response_time": 420.0},
    {"kind": "auth", "user_type": "registered_user", "success": False, "account_locked": True},
    {"kind": "notification", "channel": "sms", "status": "failed", "notification_type": "panic_update"},
    {"kind": "subscription", "subscription_id": "sub-monitoring", "plan": "family", "action": "purchased",
     "amount": 199.0, "currency": "ZAR", "expires_at": "2999-01-01T00:00:00+00:00"},
    {"kind": "credit_transaction", "customer_id": "customer-1", "type": "purchase", "credits": 10, "amount": 100.0},
    {"kind": "prank_detection", "request_id": "request-1", "zone": "harbour", "detector": "repeat_caller"},
    {"kind": "http_request", "method": "POST", "endpoint": "/api/v1/panic", "status": 503, "duration": 2.5},
    {"kind": "gauge_report", "websocket_connections": 120, "cache_hits": 40, "cache_misses": 4},
]  # fmt: skip
DUPLICATE = {"kind": "auth", "user_type": "admin", "success": True, "event_id": "6f1d2c1e-8f7b-4d7e-9a52-3c1d7e0b9a11"}
BAD = [
    {"kind": "http_request", "method": "GET", "endpoint": "/api/v1/panic/8812", "status": 200, "duration": 0.01},
    {"kind": "auth", "success": True},
]


def publish(broker_url: str, task: object, *args: object) -> None:
    """Send one task message to the test's own broker (the suite's default broker is another Redis)."""
    with Connection(broker_url) as connection:
        task.apply_async(args=args, connection=connection)  # type: ignore[attr-defined]


def test_every_expression_parses_and_returns_data(
    own_redis: RedisServer, own_database: PostgresDatabase, processes: list[LoggedProcess], tmp_path: Path
) -> None:
    """Each rule and dashboard expression parses, names real metrics, and returns series (filters: their operands)."""
    env = {"BROKER_URL": own_redis.url, "DATABASE_URL": own_database.url, **SHORT_INTERVALS}
    broken = Worker(
        {**env, "DATABASE_URL": UNREACHABLE_DATABASE, "TASK_MAX_RETRIES": "1", "TASK_RETRY_BACKOFF_MAX_SECONDS": "1"},
        tmp_path / "broken",
        concurrency=1,
    )
    healthy = Worker(env, tmp_path / "healthy")
    prometheus = Prometheus(tmp_path / "prometheus", targets=[f"127.0.0.1:{broken.port}", f"127.0.0.1:{healthy.port}"])
    processes.extend([prometheus, broken])
    prometheus.start()
    broken.start()

    # 1. The broken worker alone: dead letters, retries, failures, a database reported down.
    publish(own_redis.url, tasks.record_events, ONE_OF_EACH[:2])
    publish(own_redis.url, scheduled.refresh_health_metrics)
    publish(own_redis.url, scheduled.aggregate_zone_performance)
    wait_until(
        lambda: prometheus.query("metrics_events_dead_lettered_total").json()["data"]["result"] != [],
        timeout=180,
        what=f"the broken worker's first dead letters in Prometheus (log: {broken.log_path})",
    )
    # A labelled counter's first samples are invisible to increase(): only a second batch fires EventsDeadLettered.
    publish(own_redis.url, tasks.record_events, ONE_OF_EACH[2:3])
    wait_until(
        lambda: (
            total(s := broken.scrape(), "metrics_events_dead_lettered_total") == 3
            and total(s, "celery_task_failures_total") >= 1
            and total(s, "dependency_up", dependency="database") == 0
            and ("dependency_up", frozenset({("dependency", "database")})) in s
        ),
        timeout=180,
        what=f"the broken worker's dead letters, failures and database down (log: {broken.log_path})",
    )
    # A Celery app of its own on the test's broker: the worker app's control replies use its default broker.
    control = Celery("control", broker=own_redis.url, set_as_current=False).control
    for queue in ("events", "scheduled"):
        replies = control.cancel_consumer(queue, destination=[broken.hostname], reply=True, timeout=10)
        assert replies, f"{broken.hostname} did not stop consuming {queue}"

    # 2. The healthy worker, beat, one event of each kind, a duplicate, bad payloads, the demo stream.
    processes.append(healthy)
    healthy.start()
    processes.append(Beat(env, tmp_path / "beat").start())
    publish(own_redis.url, tasks.record_events, ONE_OF_EACH)
    publish(own_redis.url, tasks.record_events, [DUPLICATE])
    publish(own_redis.url, tasks.record_events, [DUPLICATE])
    publish(own_redis.url, tasks.record_events, BAD)
    demo = LoggedProcess(
        [sys.executable, "-m", "app.cli", "demo", "--rate", "30", "--duration", "3", "--seed", "8"],
        {"BROKER_URL": own_redis.url, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "demo_multiproc")},
        tmp_path / "demo.log",
    )
    (tmp_path / "demo_multiproc").mkdir()
    processes.append(demo)
    demo.start_process()
    assert demo.process is not None
    assert demo.process.wait(timeout=60) == 0, demo.log()
    wait_until(
        lambda: (
            every_job_succeeded(healthy)
            and total(s := healthy.scrape(), "metrics_events_duplicate_total") == 1
            and total(s, "metrics_events_rejected_total") == 2
            and any(name == "firm_completion_ratio" for name, _ in s)
            and total(s, "subscriptions_active") >= 1
        ),
        timeout=240,  # generous: a deadline, not a timing; a loaded CI machine took over 90 s
        what=f"every job's success, the duplicate, the rejects and the aggregates (log: {healthy.log_path})",
    )

    # 3. Every expression, polled until Prometheus has the samples its windows and rules need.
    expressions = all_expressions()
    outcomes: list[Outcome] = []

    def all_pass() -> bool:
        nonlocal outcomes
        checker = Checker(prometheus.query, known_names(prometheus.series_names()))
        outcomes = checker.check_all(expressions)
        return all(outcome.passed for outcome in outcomes)

    try:
        wait_until(all_pass, timeout=180, what="every expression to pass", interval=2)
    except TimeoutError:
        failed = "\n".join(str(outcome) for outcome in outcomes if not outcome.passed)
        pytest.fail(f"expressions that fail:\n{failed}")
    direct = sum(outcome.returned_data for outcome in outcomes)
    via_operands = sum(outcome.operands_returned_data for outcome in outcomes)
    print(
        f"\nchecked {len(outcomes)} expressions: {direct} returned data, "
        f"{via_operands} returned none but their filter's operands did"
    )
    assert direct + via_operands == len(outcomes) == len(expressions)
