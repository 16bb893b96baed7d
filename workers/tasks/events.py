"""Event tasks: the names and keyword arguments the platform's app code already calls.

Each accepts its event's fields as keyword arguments (see panic_metrics_client.events for what
each kind takes) and hands them to app.ingest; a bad payload is rejected there.
"""

from __future__ import annotations

from typing import Any

from workers.celery_app import app
from workers.tasks.base import EventTask


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_panic_request_metrics")
def record_panic_request_metrics(self: EventTask, /, **fields: Any) -> dict[str, int]:
    """service_type, status, zone, firm_id=None, response_time=None (seconds)."""
    return self.ingest([fields], kind="panic_request")


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_auth_metrics")
def record_auth_metrics(self: EventTask, /, **fields: Any) -> dict[str, int]:
    """user_type, success, account_locked=False."""
    return self.ingest([fields], kind="auth")


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_notification_metrics")
def record_notification_metrics(self: EventTask, /, **fields: Any) -> dict[str, int]:
    """channel, status, notification_type."""
    return self.ingest([fields], kind="notification")


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_subscription_metrics")
def record_subscription_metrics(self: EventTask, /, **fields: Any) -> dict[str, int]:
    """subscription_id, plan, action, amount=None, currency=None, expires_at=None."""
    return self.ingest([fields], kind="subscription")


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_credit_transaction_metrics")
def record_credit_transaction_metrics(self: EventTask, /, **fields: Any) -> dict[str, int]:
    """customer_id, type, credits, amount=None."""
    return self.ingest([fields], kind="credit_transaction")


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_prank_detection_metrics")
def record_prank_detection_metrics(self: EventTask, /, **fields: Any) -> dict[str, int]:
    """request_id, zone, detector, firm_id=None."""
    return self.ingest([fields], kind="prank_detection")


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_http_request_metrics")
def record_http_request_metrics(self: EventTask, /, **fields: Any) -> dict[str, int]:
    """method, endpoint (route template), status, duration (seconds)."""
    return self.ingest([fields], kind="http_request")


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_gauge_report")
def record_gauge_report(self: EventTask, /, **fields: Any) -> dict[str, int]:
    """source="web", websocket_connections=None, cache_hits=0, cache_misses=0."""
    return self.ingest([fields], kind="gauge_report")


@app.task(base=EventTask, bind=True, name="panic_metrics.events.record_events")
def record_events(self: EventTask, /, events: Any) -> dict[str, int]:
    """Many events of any kinds, each a dict with its `kind`: the fast path, one INSERT."""
    return self.ingest(events if isinstance(events, list) else [events], kind=None)
