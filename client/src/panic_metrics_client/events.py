"""The event catalogue: what each kind of metric event is, one pydantic model per kind.

The one definition both sides use: app code validates at the call site with
it, and the worker validates every payload it receives with it again. Every
model validates a payload exactly as it travels (JSON), so the error of a bad
payload names the field and the rule it broke. Turning a payload into an
event, or into an `InvalidEvent` with a short reason, is
panic_metrics_client.parsing.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Annotated, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# A day: no panic response or HTTP request is longer, so a bigger value is a bug.
MAX_DURATION_SECONDS = 86_400.0
MAX_MONEY = Decimal("1000000000")

# The `metric_events.amount` column keeps four decimal places.
MONEY_QUANTUM = Decimal("0.0001")

# How far in the future `occurred_at` may be. Both sides read the same
# variable; the worker also sets it from its settings (set_max_clock_skew).
_max_clock_skew = timedelta(seconds=float(os.environ.get("MAX_CLOCK_SKEW_SECONDS") or 60.0))


def set_max_clock_skew(seconds: float) -> None:
    """Refuse an `occurred_at` more than `seconds` in the future (default: MAX_CLOCK_SKEW_SECONDS or 60)."""
    global _max_clock_skew  # noqa: PLW0603 - one process-wide rule, set once from settings
    _max_clock_skew = timedelta(seconds=seconds)


def _in_utc(value: datetime) -> datetime:
    # SQLite keeps a datetime's wall time and drops its offset, so every
    # timestamp is stored in UTC; year 1 at +01:00 has no UTC equivalent.
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_out_of_range", "timestamp has no UTC equivalent") from None


def _to_column_scale(value: Decimal) -> Decimal:
    # PostgreSQL refuses an exponent like 1e-20000 instead of rounding it.
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


# Control characters are refused: PostgreSQL text cannot hold NUL, and none
# belongs in a zone, an id or a label.
Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=r"^[^\x00-\x1F\x7F]+$")
]
LabelName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_\-]{0,63}$")]
Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION_SECONDS, allow_inf_nan=False, strict=True)]
Money = Annotated[Decimal, Field(ge=0, le=MAX_MONEY, allow_inf_nan=False), AfterValidator(_to_column_scale)]
Timestamp = Annotated[AwareDatetime, AfterValidator(_in_utc)]
Count = Annotated[int, Field(ge=0, le=1_000_000_000, strict=True)]


class ServiceType(StrEnum):
    SECURITY = "security"
    MEDICAL = "medical"
    FIRE = "fire"


class PanicStatus(StrEnum):
    REQUESTED = "requested"
    ACCEPTED = "accepted"
    EN_ROUTE = "en_route"
    ARRIVED = "arrived"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    PRANK = "prank"


class NotificationChannel(StrEnum):
    PUSH = "push"
    SMS = "sms"
    EMAIL = "email"
    IN_APP = "in_app"


class NotificationStatus(StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


class SubscriptionAction(StrEnum):
    PURCHASED = "purchased"
    RENEWED = "renewed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class CreditTransactionType(StrEnum):
    PURCHASE = "purchase"
    SPEND = "spend"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"


class HttpMethod(StrEnum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"
    OPTIONS = "OPTIONS"


# A path segment that is a number or a UUID means the caller sent the raw path,
# whose ids would explode the series count; the route template is wanted. One
# search over the whole path (not a match per segment): it runs in every web request.
_RAW_SEGMENT = re.compile(
    r"(?:^|/)(?:\d+|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})(?=/|$)"
)


class Event(BaseModel):
    """Fields every event has: its identity and when it happened."""

    # Lax only where JSON has no native type (UUIDs, timestamps, enums as strings,
    # decimals); numbers and booleans are strict so "180" or 1 for True is refused.
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    event_id: Annotated[uuid.UUID, Field(default_factory=uuid.uuid4)]
    occurred_at: Annotated[Timestamp, Field(default_factory=lambda: datetime.now(UTC))]

    @field_validator("occurred_at")
    @classmethod
    def _not_in_the_future(cls, value: datetime) -> datetime:
        skew = _max_clock_skew
        if value > datetime.now(UTC) + skew:
            raise PydanticCustomError(
                "future_timestamp", "occurred_at is in the future beyond {skew}s", {"skew": skew.total_seconds()}
            )
        return value


class PanicRequestEvent(Event):
    """A panic request changed status (requested, accepted, ..., completed)."""

    kind: Literal["panic_request"] = "panic_request"
    service_type: ServiceType
    status: PanicStatus
    zone: Identifier
    firm_id: Identifier | None = None
    response_time: Seconds | None = None


class AuthEvent(Event):
    """A login attempt."""

    kind: Literal["auth"] = "auth"
    user_type: LabelName
    success: Annotated[bool, Field(strict=True)]
    account_locked: Annotated[bool, Field(strict=True)] = False


class NotificationEvent(Event):
    """A notification sent to a customer or a firm."""

    kind: Literal["notification"] = "notification"
    channel: NotificationChannel
    status: NotificationStatus
    notification_type: LabelName


class SubscriptionEvent(Event):
    """A subscription was purchased, renewed, cancelled or expired."""

    kind: Literal["subscription"] = "subscription"
    subscription_id: Identifier
    plan: LabelName
    action: SubscriptionAction
    amount: Money | None = None
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    expires_at: Timestamp | None = None


class CreditTransactionEvent(Event):
    """Credits bought, spent, refunded or adjusted by a customer."""

    kind: Literal["credit_transaction"] = "credit_transaction"
    customer_id: Identifier
    type: CreditTransactionType
    credits: Count
    amount: Money | None = None


class PrankDetectionEvent(Event):
    """A detector flagged a panic request as a prank."""

    kind: Literal["prank_detection"] = "prank_detection"
    request_id: Identifier
    zone: Identifier
    firm_id: Identifier | None = None
    detector: LabelName


def _route_template(value: str) -> str:
    if _RAW_SEGMENT.search(value):
        raise PydanticCustomError("raw_path", "endpoint must be the route template, not the raw path")
    return value


Endpoint = Annotated[
    str,
    StringConstraints(min_length=1, max_length=200, pattern=r"^/[^?#\s\x00-\x1F\x7F]*$"),
    AfterValidator(_route_template),
]
HttpStatus = Annotated[int, Field(ge=100, le=599, strict=True)]

#: The bounds of the worker's `http_request_duration_seconds` histogram, declared
#: here once: a summary's bucket counts are by these bounds. Web requests: 5 ms
#: (a cache hit) to 30 s (the web app's own timeout).
HTTP_DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Partials of an exact sum: far more than durations of up to a day ever need.
MAX_SUM_PARTIALS = 32
_BUCKETS_WITH_INF = len(HTTP_DURATION_BUCKETS) + 1
# No partial of a summary's sum is larger than its most requests (a billion) of a day each.
_MOST_SECONDS = 1_000_000_000 * MAX_DURATION_SECONDS


class HttpRequestEvent(Event):
    """One request served by the platform's web app, by route template."""

    kind: Literal["http_request"] = "http_request"
    method: HttpMethod
    endpoint: Endpoint
    status: HttpStatus
    duration: Seconds


class HttpSummaryEvent(Event):
    """The requests of one (method, route template, status) that one web process served in one interval.

    Summed where they happened (panic_metrics_client.http_summaries) and
    counted by the worker exactly as the requests one by one would have been:
    `count` requests, how many fell in each bucket of `HTTP_DURATION_BUCKETS`
    (non-cumulative, the last one past 30 s), and the exact sum of their
    durations as non-overlapping partials (`math.fsum(duration_sum)` is the
    sum, correctly rounded). `occurred_at` is the end of the interval.
    """

    kind: Literal["http_summary"] = "http_summary"
    method: HttpMethod
    endpoint: Endpoint
    status: HttpStatus
    interval_start: Timestamp
    count: Annotated[int, Field(ge=1, le=1_000_000_000, strict=True)]
    buckets: Annotated[list[Count], Field(min_length=_BUCKETS_WITH_INF, max_length=_BUCKETS_WITH_INF)]
    duration_sum: Annotated[
        list[Annotated[float, Field(strict=True, allow_inf_nan=False)]],
        Field(min_length=1, max_length=MAX_SUM_PARTIALS),
    ]

    @field_validator("interval_start")
    @classmethod
    def _not_after_the_end(cls, value: datetime, info: ValidationInfo) -> datetime:
        # occurred_at (a field of Event) is validated first; absent from `info.data` when it was refused.
        end = info.data.get("occurred_at")
        if end is not None and value > end:
            raise PydanticCustomError("interval", "interval_start must not be after occurred_at")
        return value

    @field_validator("duration_sum")
    @classmethod
    def _a_duration(cls, value: list[float]) -> list[float]:
        if any(abs(partial) > _MOST_SECONDS for partial in value) or not math.fsum(value) >= 0.0:
            raise PydanticCustomError("duration_sum", "duration_sum must add up to between 0 and count days")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if sum(self.buckets) != self.count:
            raise PydanticCustomError("bucket_total", "the bucket counts must add up to count")
        # Each request of bucket i took more than the bound below it and at most its own.
        low = math.fsum(n * bound for n, bound in zip(self.buckets[1:], HTTP_DURATION_BUCKETS, strict=True))
        tops = (*HTTP_DURATION_BUCKETS, MAX_DURATION_SECONDS)
        high = math.fsum(n * bound for n, bound in zip(self.buckets, tops, strict=True))
        total = self.total_duration
        if not low * (1 - 1e-9) <= total <= high * (1 + 1e-9):
            raise PydanticCustomError(
                "duration_sum",
                "duration_sum {total} is outside what the bucket counts allow [{low}, {high}]",
                {"total": total, "low": low, "high": high},
            )
        return self

    @property
    def total_duration(self) -> float:
        """The exact sum of the durations, correctly rounded."""
        return math.fsum(self.duration_sum)


class GaugeReportEvent(Event):
    """A periodic report from the web app: open WebSockets, cache hits and misses since the last."""

    kind: Literal["gauge_report"] = "gauge_report"
    source: LabelName = "web"
    websocket_connections: Count | None = None
    cache_hits: Count = 0
    cache_misses: Count = 0

    @model_validator(mode="after")
    def _reports_something(self) -> Self:
        if self.websocket_connections is None and not (self.cache_hits or self.cache_misses):
            raise PydanticCustomError("empty_report", "a gauge report needs at least one value")
        return self


AnyEvent = Annotated[
    PanicRequestEvent
    | AuthEvent
    | NotificationEvent
    | SubscriptionEvent
    | CreditTransactionEvent
    | PrankDetectionEvent
    | HttpRequestEvent
    | HttpSummaryEvent
    | GaugeReportEvent,
    Field(discriminator="kind"),
]

#: kind -> its model: every member of `AnyEvent`, the one list of kinds.
EVENT_MODELS: dict[str, type[Event]] = {
    model.model_fields["kind"].default: model for model in get_args(get_args(AnyEvent)[0])
}
EVENT_KINDS = tuple(EVENT_MODELS)
