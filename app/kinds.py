"""What the worker keeps of each kind of event: one declaration per kind.

The client's catalogue (panic_metrics_client.events) says what an event *is*
and under which task name it travels. A `Kind` here says what the worker does
with one that is new:

- `columns`: the `metric_events` columns its row fills, each from a model field;
- `capped`: its free-text fields that become label values, each through the
  cap of the label dimension of the same name (app.metrics.labels);
- `moves`: the metrics of app.metrics.definitions it moves, with their labels
  and by how much.

The store (`app.store.event_row`) and the counting (`app.ingest` through
`app.metrics.counting`) read these; the tasks (workers/tasks/events.py) are
registered from the catalogue itself. Nothing else dispatches on the kind. A
new kind is a model in the catalogue, a `Kind` below and a migration for any
new column; a catalogue kind without exactly one `Kind` stops the import.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar, get_args

from app.metrics import definitions as m
from app.metrics.counting import Labels, Move, Observations
from panic_metrics_client.events import (
    EVENT_MODELS,
    AuthEvent,
    CreditTransactionEvent,
    Event,
    GaugeReportEvent,
    HttpRequestEvent,
    HttpSummaryEvent,
    NotificationEvent,
    PanicRequestEvent,
    PrankDetectionEvent,
    SubscriptionEvent,
)

E = TypeVar("E", bound=Event)


@dataclass(frozen=True, slots=True)
class Kind(Generic[E]):
    """One kind of event as the worker stores and counts it."""

    model: type[E]
    #: `metric_events` column -> the model field stored in it (an enum as its value), or what computes it.
    columns: Mapping[str, str | Callable[[E], Any]]
    #: Fields whose values are label values past a cap; `moves` reads them capped.
    capped: tuple[str, ...]
    #: The metrics one new event moves, given the event and its capped label values.
    moves: Callable[[E, Labels], tuple[Move, ...]]
    #: Columns whose field holds an enum: the driver gets its value, a plain str, not an Enum to adapt.
    _enum_columns: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        fields = self.model.model_fields
        enums = tuple(
            column
            for column, name in self.columns.items()
            if isinstance(name, str) and name in fields and _holds_enum(fields[name].annotation)
        )
        object.__setattr__(self, "_enum_columns", enums)

    @property
    def name(self) -> str:
        """The kind's name, as events and rows carry it (`panic_request`)."""
        return str(self.model.model_fields["kind"].default)

    def row(self, event: E) -> dict[str, Any]:
        """The kind's own columns of `event`'s row."""
        row = {
            column: getattr(event, name) if isinstance(name, str) else name(event)
            for column, name in self.columns.items()
        }
        for column in self._enum_columns:
            if row[column] is not None:
                row[column] = row[column].value
        return row

    def raw_labels(self, event: E) -> dict[str, str]:
        """The free-text label values of `event`, before their caps."""
        return {name: getattr(event, name) for name in self.capped}


def _holds_enum(annotation: Any) -> bool:
    # `Status`, `Status | None`, `Annotated[Status, ...]`: worked out once, not per event.
    if isinstance(annotation, type):
        return issubclass(annotation, Enum)
    return any(_holds_enum(arg) for arg in get_args(annotation))


def stored(*same: str, **renamed: str | Callable[[Any], Any]) -> dict[str, str | Callable[[Any], Any]]:
    """Columns named as their field (`same`), and columns stored from a field of another name (`column=field`)
    or computed from the event (`column=function`)."""
    return {**{name: name for name in same}, **renamed}


# Unannotated, so that mypy types each lambda's event as its own model.
_DECLARED = (
    Kind(
        PanicRequestEvent,
        columns=stored("service_type", "status", "zone", "firm_id", response_time_seconds="response_time"),
        capped=("zone",),
        moves=lambda e, cap: (
            Move(m.PANIC_REQUESTS, {"service_type": e.service_type, "status": e.status, "zone": cap["zone"]}),
            Move(m.PANIC_RESPONSE_TIME, {"service_type": e.service_type, "zone": cap["zone"]}, e.response_time),
        ),
    ),
    Kind(
        AuthEvent,
        columns=stored("user_type", "success", "account_locked"),
        capped=("user_type",),
        moves=lambda e, cap: (
            Move(
                m.AUTH_LOGIN_ATTEMPTS,
                {"user_type": cap["user_type"], "result": "success" if e.success else "failure"},
            ),
            Move(m.AUTH_ACCOUNT_LOCKOUTS, {"user_type": cap["user_type"]}, 1 if e.account_locked else None),
        ),
    ),
    Kind(
        NotificationEvent,
        columns=stored("channel", "status", "notification_type"),
        capped=("notification_type",),
        moves=lambda e, cap: (
            Move(
                m.NOTIFICATIONS,
                {"channel": e.channel, "status": e.status, "notification_type": cap["notification_type"]},
            ),
        ),
    ),
    Kind(
        SubscriptionEvent,
        columns=stored("subscription_id", "plan", "action", "amount", "currency", "expires_at"),
        capped=("plan",),
        moves=lambda e, cap: (Move(m.SUBSCRIPTION_EVENTS, {"plan": cap["plan"], "action": e.action}),),
    ),
    Kind(
        CreditTransactionEvent,
        columns=stored("customer_id", "credits", "amount", credit_type="type"),
        capped=(),
        moves=lambda e, _cap: (
            Move(m.CREDIT_TRANSACTIONS, {"type": e.type}),
            Move(m.CREDITS, {"type": e.type}, e.credits),
        ),
    ),
    Kind(
        PrankDetectionEvent,
        columns=stored("request_id", "zone", "firm_id", "detector"),
        capped=("zone", "detector"),
        moves=lambda _e, cap: (Move(m.PRANK_DETECTIONS, {"zone": cap["zone"], "detector": cap["detector"]}),),
    ),
    Kind(
        HttpRequestEvent,
        columns=stored("method", "endpoint", http_status="status", duration_seconds="duration"),
        capped=("endpoint",),
        moves=lambda e, cap: (
            Move(m.HTTP_REQUESTS, {"method": e.method, "endpoint": cap["endpoint"], "status": str(e.status)}),
            Move(m.HTTP_REQUEST_DURATION, {"method": e.method, "endpoint": cap["endpoint"]}, e.duration),
        ),
    ),
    Kind(
        HttpSummaryEvent,
        columns=stored(
            "method",
            "endpoint",
            http_status="status",
            request_count="count",
            duration_seconds="total_duration",
            duration_buckets=lambda e: json.dumps(e.buckets, separators=(",", ":")),
        ),
        capped=("endpoint",),
        # Exactly what its `count` requests would have moved one by one.
        moves=lambda e, cap: (
            Move(
                m.HTTP_REQUESTS,
                {"method": e.method, "endpoint": cap["endpoint"], "status": str(e.status)},
                e.count,
            ),
            Move(
                m.HTTP_REQUEST_DURATION,
                {"method": e.method, "endpoint": cap["endpoint"]},
                Observations(e.buckets, e.duration_sum),
            ),
        ),
    ),
    Kind(
        GaugeReportEvent,
        columns=stored("source", "websocket_connections", "cache_hits", "cache_misses"),
        capped=("source",),
        moves=lambda e, cap: (
            Move(m.WEBSOCKET_CONNECTIONS, {"source": cap["source"]}, e.websocket_connections),
            # None: not moved. Zero hits or misses add nothing, so they are skipped too.
            Move(m.CACHE_REQUESTS, {"result": "hit"}, e.cache_hits or None),
            Move(m.CACHE_REQUESTS, {"result": "miss"}, e.cache_misses or None),
        ),
    ),
)

KINDS: tuple[Kind[Any], ...] = _DECLARED

#: Each model of the catalogue -> its declaration: the one lookup per event.
KIND_OF: dict[type[Event], Kind[Any]] = {kind.model: kind for kind in KINDS}


def kind_of(event: Event) -> Kind[Any]:
    """The declaration of `event`'s kind."""
    return KIND_OF[type(event)]


def _check_one_per_model() -> None:
    declared = [kind.model for kind in KINDS]
    missing = [name for name, model in EVENT_MODELS.items() if model not in declared]
    twice = {model.__name__ for model in declared if declared.count(model) > 1}
    unknown = [model.__name__ for model in declared if model not in EVENT_MODELS.values()]
    if missing or twice or unknown:
        raise RuntimeError(
            f"app.kinds must declare each catalogue kind once: missing {missing}, twice {sorted(twice)},"
            f" not in the catalogue {unknown}"
        )


# At import: a worker whose catalogue has a kind it cannot store must not start.
_check_one_per_model()
