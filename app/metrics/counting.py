"""Turn stored events into metric increments, recorded in a `Tally`.

The tally is filled inside the transaction that stores the events, for the
events that were new, and applied only once that transaction committed (see
app.metrics.pending), so a counter's increase equals the rows inserted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import singledispatch

from sqlalchemy.orm import Session

from app.metrics import definitions as m
from app.metrics.labels import LabelCaps
from app.metrics.pending import Tally
from panic_metrics_client.events import (
    EVENT_KINDS,
    AuthEvent,
    CreditTransactionEvent,
    CreditTransactionType,
    Event,
    GaugeReportEvent,
    HttpRequestEvent,
    NotificationEvent,
    PanicRequestEvent,
    PrankDetectionEvent,
    SubscriptionEvent,
)
from panic_metrics_client.parsing import InvalidEvent

Labels = Mapping[str, str]


def capped_labels(session: Session, caps: LabelCaps, events: Sequence[Event]) -> list[dict[str, str]]:
    """The free-text label values of each event, passed through their caps (new ones admitted in sorted order)."""
    raw = [_raw_labels(event) for event in events]
    capped = caps.cap_all(session, (item for labels in raw for item in labels.items()))
    return [{dimension: capped[dimension, value] for dimension, value in labels.items()} for labels in raw]


def _raw_labels(event: Event) -> dict[str, str]:
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
    return raw


def count_stored(
    tally: Tally, event: Event, labels: Labels, *, published_at: datetime | None, stored_at: datetime
) -> None:
    """Tally the business metrics of one newly stored event, and its lag."""
    kind = event.kind
    tally.inc(m.EVENTS_STORED.labels(kind=kind))
    lag = max(0.0, (stored_at - event.occurred_at).total_seconds())
    tally.observe(m.EVENT_LAG.labels(kind=kind, since="occurred"), lag)
    if published_at is not None:
        lag = max(0.0, (stored_at - published_at).total_seconds())
        tally.observe(m.EVENT_LAG.labels(kind=kind, since="published"), lag)
    _count_business(event, tally, labels)


@singledispatch
def _count_business(event: Event, _tally: Tally, _labels: Labels) -> None:
    raise TypeError(f"no metrics defined for {type(event).__name__}")


@_count_business.register
def _(event: PanicRequestEvent, tally: Tally, labels: Labels) -> None:
    tally.inc(m.PANIC_REQUESTS.labels(service_type=event.service_type, status=event.status, zone=labels["zone"]))
    if event.response_time is not None:
        tally.observe(
            m.PANIC_RESPONSE_TIME.labels(service_type=event.service_type, zone=labels["zone"]), event.response_time
        )


@_count_business.register
def _(event: AuthEvent, tally: Tally, labels: Labels) -> None:
    result = "success" if event.success else "failure"
    tally.inc(m.AUTH_LOGIN_ATTEMPTS.labels(user_type=labels["user_type"], result=result))
    if event.account_locked:
        tally.inc(m.AUTH_ACCOUNT_LOCKOUTS.labels(user_type=labels["user_type"]))


@_count_business.register
def _(event: NotificationEvent, tally: Tally, labels: Labels) -> None:
    tally.inc(
        m.NOTIFICATIONS.labels(
            channel=event.channel, status=event.status, notification_type=labels["notification_type"]
        )
    )


@_count_business.register
def _(event: SubscriptionEvent, tally: Tally, labels: Labels) -> None:
    tally.inc(m.SUBSCRIPTION_EVENTS.labels(plan=labels["plan"], action=event.action))


@_count_business.register
def _(event: CreditTransactionEvent, tally: Tally, _labels: Labels) -> None:
    tally.inc(m.CREDIT_TRANSACTIONS.labels(type=event.type))
    tally.inc(m.CREDITS.labels(type=event.type), event.credits)


@_count_business.register
def _(_event: PrankDetectionEvent, tally: Tally, labels: Labels) -> None:
    tally.inc(m.PRANK_DETECTIONS.labels(zone=labels["zone"], detector=labels["detector"]))


@_count_business.register
def _(event: HttpRequestEvent, tally: Tally, labels: Labels) -> None:
    tally.inc(m.HTTP_REQUESTS.labels(method=event.method, endpoint=labels["endpoint"], status=str(event.status)))
    tally.observe(m.HTTP_REQUEST_DURATION.labels(method=event.method, endpoint=labels["endpoint"]), event.duration)


@_count_business.register
def _(event: GaugeReportEvent, tally: Tally, labels: Labels) -> None:
    if event.websocket_connections is not None:
        tally.set(m.WEBSOCKET_CONNECTIONS.labels(source=labels["source"]), event.websocket_connections)
    if event.cache_hits:
        tally.inc(m.CACHE_REQUESTS.labels(result="hit"), event.cache_hits)
    if event.cache_misses:
        tally.inc(m.CACHE_REQUESTS.labels(result="miss"), event.cache_misses)


def count_duplicate(tally: Tally, kind: str) -> None:
    """Tally a redelivered event that was already stored."""
    tally.inc(m.EVENTS_DUPLICATE.labels(kind=kind))


def count_rejected(tally: Tally, invalid: InvalidEvent) -> None:
    """Tally a payload that failed validation, newly stored in rejected_events."""
    tally.inc(m.EVENTS_REJECTED.labels(kind=invalid.kind, reason=invalid.reason))


def initialise_fixed_series() -> None:
    """Create, at 0, every series whose label values are all from a closed set.

    Called once in the process that serves the endpoint, so a scrape shows
    them before their first event and `increase()` over that first event
    reads 1, not 0. Series with a free-text label (zone, user type, plan,
    ...) cannot be listed in advance and still appear on first use.
    """
    for kind in EVENT_KINDS:
        m.EVENTS_STORED.labels(kind=kind)
        m.EVENTS_DUPLICATE.labels(kind=kind)
        m.EVENTS_DEAD_LETTERED.labels(kind=kind)
    m.EVENTS_DEAD_LETTERED.labels(kind="batch")
    for credit_type in CreditTransactionType:
        m.CREDIT_TRANSACTIONS.labels(type=credit_type)
        m.CREDITS.labels(type=credit_type)
    for result in ("hit", "miss"):
        m.CACHE_REQUESTS.labels(result=result)


def now() -> datetime:
    """The current time, timezone-aware (a seam for tests)."""
    return datetime.now(UTC)
