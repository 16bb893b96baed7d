"""Record panic-metrics events from app code without ever blocking or breaking the request.

    from panic_metrics_client import record_panic_request_metrics
    record_panic_request_metrics.delay(service_type="security", status="accepted", zone="downtown")

A call validates the event with the catalogue (the worker's own models) and
hands it to a background sender; see README "Calling it from app code".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from panic_metrics_client.client import Client
from panic_metrics_client.events import (
    AuthEvent,
    CreditTransactionEvent,
    Event,
    GaugeReportEvent,
    HttpRequestEvent,
    NotificationEvent,
    PanicRequestEvent,
    PrankDetectionEvent,
    SubscriptionEvent,
)
from panic_metrics_client.middleware import PanicMetricsMiddleware
from panic_metrics_client.parsing import InvalidEvent
from panic_metrics_client.settings import ClientSettings
from panic_metrics_client.state import configure, get_client
from panic_metrics_client.tasks import (
    record_auth_metrics,
    record_credit_transaction_metrics,
    record_events,
    record_gauge_report,
    record_http_request_metrics,
    record_notification_metrics,
    record_panic_request_metrics,
    record_prank_detection_metrics,
    record_subscription_metrics,
)


def record(event: Event) -> uuid.UUID:
    """Record a typed event: `record(PanicRequestEvent(service_type="fire", status="requested", zone="x"))`."""
    return get_client().record(event)


def record_many(events: Iterable[Event | Mapping[str, Any]]) -> list[uuid.UUID | None]:
    """Record many events at once: typed events, or dicts that name their `kind`."""
    return get_client().record_many(events)


def record_cache(*, hit: bool, count: int = 1) -> None:
    """Count a cache hit or miss; summed in the process and reported once per interval."""
    get_client().record_cache(hit=hit, count=count)


def flush(timeout: float | None = None) -> bool:
    """Wait until every recorded event is published or spooled (tests, scripts); False on timeout."""
    return get_client().flush(timeout)


__all__ = [
    "AuthEvent",
    "Client",
    "ClientSettings",
    "CreditTransactionEvent",
    "Event",
    "GaugeReportEvent",
    "HttpRequestEvent",
    "InvalidEvent",
    "NotificationEvent",
    "PanicMetricsMiddleware",
    "PanicRequestEvent",
    "PrankDetectionEvent",
    "SubscriptionEvent",
    "configure",
    "flush",
    "get_client",
    "record",
    "record_auth_metrics",
    "record_cache",
    "record_credit_transaction_metrics",
    "record_events",
    "record_gauge_report",
    "record_http_request_metrics",
    "record_many",
    "record_notification_metrics",
    "record_panic_request_metrics",
    "record_prank_detection_metrics",
    "record_subscription_metrics",
]
