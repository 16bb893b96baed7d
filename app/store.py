"""Persist events: one INSERT ... ON CONFLICT DO NOTHING ... RETURNING per batch.

Only the events that come back from RETURNING are new; everything else was
stored before (a redelivery) and must not be counted again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, TextClause, text
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.orm import Session

from app.db.models import MetricEvent
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

_TABLE = cast("Table", MetricEvent.__table__)
_COLUMNS = tuple(column.key for column in _TABLE.columns if column.key != "stored_at")


def event_row(event: Event, *, published_at: datetime | None) -> dict[str, Any]:
    """The `metric_events` row of one event, every column present."""
    row: dict[str, Any] = dict.fromkeys(_COLUMNS)
    row.update(event_id=event.event_id, kind=event.kind, occurred_at=event.occurred_at, published_at=published_at)
    match event:
        case PanicRequestEvent():
            row.update(
                service_type=event.service_type.value,
                status=event.status.value,
                zone=event.zone,
                firm_id=event.firm_id,
                response_time_seconds=event.response_time,
            )
        case AuthEvent():
            row.update(user_type=event.user_type, success=event.success, account_locked=event.account_locked)
        case NotificationEvent():
            row.update(
                channel=event.channel.value, status=event.status.value, notification_type=event.notification_type
            )
        case SubscriptionEvent():
            row.update(
                subscription_id=event.subscription_id,
                plan=event.plan,
                action=event.action.value,
                amount=event.amount,
                currency=event.currency,
                expires_at=event.expires_at,
            )
        case CreditTransactionEvent():
            row.update(
                customer_id=event.customer_id, credit_type=event.type.value, credits=event.credits, amount=event.amount
            )
        case PrankDetectionEvent():
            row.update(request_id=event.request_id, zone=event.zone, firm_id=event.firm_id, detector=event.detector)
        case HttpRequestEvent():
            row.update(
                method=event.method.value,
                endpoint=event.endpoint,
                http_status=event.status,
                duration_seconds=event.duration,
            )
        case GaugeReportEvent():
            row.update(
                source=event.source,
                websocket_connections=event.websocket_connections,
                cache_hits=event.cache_hits,
                cache_misses=event.cache_misses,
            )
    return row


def insert_new(session: Session, events: Sequence[Event], *, published_at: datetime | None) -> set[uuid.UUID]:
    """Insert `events` (unique event_ids) in one statement; return the ids that were not stored before."""
    rows = [event_row(e, published_at=published_at) for e in events]
    if session.get_bind().dialect.name == "postgresql":
        # One array per column: the statement text is the same for any batch
        # size, so psycopg prepares it once and skips re-parsing 3,000 placeholders.
        columns = {name: [row[name] for row in rows] for name in _COLUMNS}
        return set(session.connection().execute(_PG_UNNEST_INSERT, columns).scalars())
    statement = sqlite.insert(_TABLE).on_conflict_do_nothing(index_elements=["event_id"]).returning(_TABLE.c.event_id)
    return set(session.connection().execute(statement, rows).scalars())


def _pg_unnest_insert() -> TextClause:
    dialect = PGDialect()  # type: ignore[no-untyped-call]  # SQLAlchemy leaves dialect constructors untyped
    arrays = ", ".join(f"CAST(:{name} AS {_TABLE.c[name].type.compile(dialect=dialect)}[])" for name in _COLUMNS)
    return text(
        f"INSERT INTO {_TABLE.name} ({', '.join(_COLUMNS)}) "  # noqa: S608 - column names come from the model
        f"SELECT * FROM unnest({arrays}) "
        "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
    )


_PG_UNNEST_INSERT = _pg_unnest_insert()


def on_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's transaction commits; never if it rolls back."""
    session.info.setdefault("on_commit", []).append(callback)


@sa_event.listens_for(Session, "after_commit")
def _run_on_commit(session: Session) -> None:
    for callback in session.info.pop("on_commit", []):
        callback()


@sa_event.listens_for(Session, "after_rollback")
def _drop_on_commit(session: Session) -> None:
    session.info.pop("on_commit", None)
