"""The event pipeline end to end: .delay() → real worker → PostgreSQL → /metrics."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import Engine, func, select

from app.db.models import MetricEvent
from tests.integration.conftest import WorkerFactory
from tests.support.services import wait_until
from tests.support.worker import total, value
from workers.tasks import events as tasks

pytestmark = pytest.mark.integration


def stored(engine: Engine, **where: str) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(MetricEvent).filter_by(**where)
        return int(connection.execute(query).scalar_one())


def test_events_fired_with_delay_are_stored_and_counted_exactly(
    start_worker: WorkerFactory, pg_engine: Engine, unique: str
) -> None:
    """Every kind fired with .delay() lands once in the database and once on /metrics."""
    worker = start_worker()
    for i in range(30):
        tasks.record_panic_request_metrics.delay(
            service_type="security", status="accepted", firm_id="firm123", zone=unique, response_time=60.0 + i
        )
    for _ in range(7):
        tasks.record_auth_metrics.delay(user_type="registered_user", success=False, account_locked=True)
    tasks.record_notification_metrics.delay(channel="sms", status="delivered", notification_type="panic_update")
    tasks.record_subscription_metrics.delay(
        subscription_id=f"sub-{unique}", plan="premium", action="purchased", amount=349.0, currency="ZAR"
    )
    tasks.record_credit_transaction_metrics.delay(customer_id=f"c-{unique}", type="purchase", credits=25, amount=50)
    tasks.record_prank_detection_metrics.delay(request_id=f"r-{unique}", zone=unique, detector="repeat_caller")
    tasks.record_http_request_metrics.delay(method="GET", endpoint=f"/api/{unique}", status=200, duration=0.05)
    tasks.record_gauge_report.delay(source="web", websocket_connections=42, cache_hits=9, cache_misses=1)
    tasks.record_events.delay(
        [
            {
                "kind": "panic_request",
                "service_type": "fire",
                "status": "completed",
                "zone": unique,
                "response_time": 600,
            },
            {"kind": "http_request", "method": "POST", "endpoint": f"/api/{unique}", "status": 500, "duration": 1.5},
        ]
    )

    def done() -> bool:
        samples = worker.scrape()
        return (
            total(samples, "panic_requests_total", zone=unique) == 31
            and total(samples, "http_requests_total", endpoint=f"/api/{unique}") == 2
            and value(samples, "websocket_connections", source="web") == 42
        )

    wait_until(done, timeout=60, what="all events counted")
    samples = worker.scrape()
    assert value(samples, "panic_requests_total", service_type="security", status="accepted", zone=unique) == 30
    assert value(samples, "panic_requests_total", service_type="fire", status="completed", zone=unique) == 1
    assert value(samples, "panic_request_response_time_seconds_count", service_type="security", zone=unique) == 30
    assert value(samples, "panic_request_response_time_seconds_sum", service_type="security", zone=unique) == sum(
        60.0 + i for i in range(30)
    )
    assert (
        value(samples, "panic_request_response_time_seconds_bucket", service_type="fire", zone=unique, le="600.0") == 1
    )
    assert value(samples, "auth_login_attempts_total", user_type="registered_user", result="failure") >= 7
    assert value(samples, "prank_detections_total", zone=unique, detector="repeat_caller") == 1
    assert value(samples, "http_requests_total", method="POST", endpoint=f"/api/{unique}", status="500") == 1
    assert value(samples, "cache_requests_total", result="hit") >= 9
    assert (
        total(samples, "celery_task_duration_seconds_count", task="panic_metrics.events.record_panic_request_metrics")
        >= 30
    )
    assert total(samples, "metrics_event_lag_seconds_count", kind="panic_request", since="published") >= 31
    assert stored(pg_engine, zone=unique, kind="panic_request") == 31
    assert stored(pg_engine, subscription_id=f"sub-{unique}") == 1


def test_same_event_id_delivered_twice_is_counted_once(
    start_worker: WorkerFactory, pg_engine: Engine, unique: str
) -> None:
    """A redelivered event (same event_id) is stored once, counted once and counted as a duplicate."""
    worker = start_worker()
    event_id = str(uuid.uuid4())
    for _ in range(2):
        tasks.record_panic_request_metrics.delay(
            event_id=event_id, service_type="medical", status="requested", zone=unique
        )
    tasks.record_events.delay(
        [
            {
                "kind": "panic_request",
                "event_id": event_id,
                "service_type": "medical",
                "status": "requested",
                "zone": unique,
            }
        ]
    )

    wait_until(
        lambda: value(worker.scrape(), "metrics_events_duplicate_total", kind="panic_request") >= 2,
        timeout=60,
        what="both duplicates seen",
    )
    samples = worker.scrape()
    assert value(samples, "panic_requests_total", service_type="medical", status="requested", zone=unique) == 1
    assert stored(pg_engine, zone=unique) == 1


def test_bad_payloads_are_rejected_and_the_worker_keeps_serving(start_worker: WorkerFactory, unique: str) -> None:
    """Malformed payloads are counted by reason, never stored, and the valid ones around them go through."""
    worker = start_worker()
    bad_id = str(uuid.uuid4())
    bad = [
        {"service_type": "plumbing", "status": "accepted", "zone": unique},
        {"service_type": "security", "status": "accepted", "zone": unique, "response_time": -5},
        {"service_type": "security", "status": "accepted", "zone": "z" * 5000},
        {"service_type": "security", "status": "accepted", "zone": unique, "occurred_at": "2026-01-01T00:00:00"},
        {"service_type": "security", "status": "accepted", "zone": unique, "surprise": True, "event_id": bad_id},
        {"status": "accepted", "zone": unique},
    ]
    for payload in bad:
        tasks.record_panic_request_metrics.delay(**payload)
    tasks.record_events.delay([{"kind": "nonsense"}, {"kind": "auth", "user_type": "guest", "success": "yes"}, 42])
    tasks.record_panic_request_metrics.delay(service_type="fire", status="requested", zone=unique)

    def counted() -> bool:
        samples = worker.scrape()
        return (
            total(samples, "metrics_events_rejected_total") >= 9
            and total(samples, "panic_requests_total", zone=unique) == 1
        )

    wait_until(counted, timeout=60, what="rejections and the valid event counted")
    samples = worker.scrape()
    reasons = {
        dict(labels)["reason"] for (name, labels), v in samples.items() if name == "metrics_events_rejected_total" and v
    }
    assert {"enum", "greater_than_equal", "string_too_long", "timezone_aware", "extra_forbidden", "missing"} <= reasons
    assert {"unknown_kind", "bool_type"} <= reasons
    rejected_lines = [
        json.loads(line) for line in worker.log().splitlines() if line.startswith("{") and "event rejected" in line
    ]
    ours = [line for line in rejected_lines if line.get("event_id") == bad_id]
    assert len(ours) == 1
    assert ours[0]["reason"] == "extra_forbidden"
    assert ours[0]["task_name"] == "panic_metrics.events.record_panic_request_metrics"
    assert ours[0]["task_id"]
    assert worker.process is not None
    assert worker.process.poll() is None
