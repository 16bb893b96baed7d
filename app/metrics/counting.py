"""Turn stored events into metric increments.

Called only after the transaction that stored the events committed, and only
for events that were new, so a counter's increase equals the rows inserted.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import singledispatch

from sqlalchemy.orm import Session

from app.metrics import definitions as m
from app.metrics.labels import LabelCaps
from panic_metrics_client.events import (
    AuthEvent,
    CreditTransactionEvent,
    Event,
    GaugeReportEvent,
    HttpRequestEvent,
    InvalidEvent,
    NotificationEvent,
    PanicRequestEvent,
    PrankDetectionEvent,
    SubscriptionEvent,
)

Labels = Mapping[str, str]


def capped_labels(session: Session, caps: LabelCaps, event: Event) -> dict[str, str]:
    """The free-text label values of `event`, each passed through its cap."""
    match event:
        case PanicRequestEvent():
            raw = {"zone": event.zone}
        case AuthEvent():
            raw = {"user_type": event.user_type}
        case NotificationEvent():
            raw = {"notification_type": event.notification_type}
        case SubscriptionEvent():
            raw = {"plan": event.plan}
        case PrankDetectionEvent():
            raw = {"zone": event.zone, "detector": event.detector}
        case HttpRequestEvent():
            raw = {"endpoint": event.endpoint}
        case GaugeReportEvent():
            raw = {"source": event.source}
        case _:
            raw = {}
    return {dimension: caps.cap(session, dimension, value) for dimension, value in raw.items()}


def count_stored(event: Event, labels: Labels, *, published_at: datetime | None, stored_at: datetime) -> None:
    """Increment the business metrics of one newly stored event, and its lag."""
    kind = event.kind
    m.EVENTS_STORED.labels(kind=kind).inc()
    m.EVENT_LAG.labels(kind=kind, since="occurred").observe(max(0.0, (stored_at - event.occurred_at).total_seconds()))
    if published_at is not None:
        m.EVENT_LAG.labels(kind=kind, since="published").observe(max(0.0, (stored_at - published_at).total_seconds()))
    _count_business(event, labels)


@singledispatch
def _count_business(event: Event, _labels: Labels) -> None:
    raise TypeError(f"no metrics defined for {type(event).__name__}")


@_count_business.register
def _(event: PanicRequestEvent, labels: Labels) -> None:
    m.PANIC_REQUESTS.labels(service_type=event.service_type, status=event.status, zone=labels["zone"]).inc()
    if event.response_time is not None:
        m.PANIC_RESPONSE_TIME.labels(service_type=event.service_type, zone=labels["zone"]).observe(event.response_time)


@_count_business.register
def _(event: AuthEvent, labels: Labels) -> None:
    result = "success" if event.success else "failure"
    m.AUTH_LOGIN_ATTEMPTS.labels(user_type=labels["user_type"], result=result).inc()
    if event.account_locked:
        m.AUTH_ACCOUNT_LOCKOUTS.labels(user_type=labels["user_type"]).inc()


@_count_business.register
def _(event: NotificationEvent, labels: Labels) -> None:
    m.NOTIFICATIONS.labels(
        channel=event.channel, status=event.status, notification_type=labels["notification_type"]
    ).inc()


@_count_business.register
def _(event: SubscriptionEvent, labels: Labels) -> None:
    m.SUBSCRIPTION_EVENTS.labels(plan=labels["plan"], action=event.action).inc()


@_count_business.register
def _(event: CreditTransactionEvent, _labels: Labels) -> None:
    m.CREDIT_TRANSACTIONS.labels(type=event.type).inc()
    m.CREDITS.labels(type=event.type).inc(event.credits)


@_count_business.register
def _(_event: PrankDetectionEvent, labels: Labels) -> None:
    m.PRANK_DETECTIONS.labels(zone=labels["zone"], detector=labels["detector"]).inc()


@_count_business.register
def _(event: HttpRequestEvent, labels: Labels) -> None:
    m.HTTP_REQUESTS.labels(method=event.method, endpoint=labels["endpoint"], status=str(event.status)).inc()
    m.HTTP_REQUEST_DURATION.labels(method=event.method, endpoint=labels["endpoint"]).observe(event.duration)


@_count_business.register
def _(event: GaugeReportEvent, labels: Labels) -> None:
    if event.websocket_connections is not None:
        m.WEBSOCKET_CONNECTIONS.labels(source=labels["source"]).set(event.websocket_connections)
    if event.cache_hits:
        m.CACHE_REQUESTS.labels(result="hit").inc(event.cache_hits)
    if event.cache_misses:
        m.CACHE_REQUESTS.labels(result="miss").inc(event.cache_misses)


def count_duplicate(kind: str) -> None:
    """Count a redelivered event that was already stored."""
    m.EVENTS_DUPLICATE.labels(kind=kind).inc()


def count_rejected(invalid: InvalidEvent) -> None:
    """Count a payload that failed validation."""
    m.EVENTS_REJECTED.labels(kind=invalid.kind, reason=invalid.reason).inc()


def now() -> datetime:
    """The current time, timezone-aware (a seam for tests)."""
    return datetime.now(UTC)
