"""Tables of the metrics store.

`metric_events` holds every kind of event in one table, keyed by `event_id`, so
deduplication is one unique key across kinds and a batch of mixed kinds is
stored with one INSERT. Columns a kind does not use stay NULL; each is typed for
the aggregations that read it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class MetricEvent(Base):
    """One recorded event of any kind; `event_id` is unique across kinds."""

    __tablename__ = "metric_events"

    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # panic_request, prank_detection
    service_type: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str | None] = mapped_column(String(16))
    zone: Mapped[str | None] = mapped_column(String(128))
    firm_id: Mapped[str | None] = mapped_column(String(128))
    response_time_seconds: Mapped[float | None] = mapped_column(Float)
    request_id: Mapped[str | None] = mapped_column(String(128))
    detector: Mapped[str | None] = mapped_column(String(64))
    # auth
    user_type: Mapped[str | None] = mapped_column(String(64))
    success: Mapped[bool | None] = mapped_column(Boolean)
    account_locked: Mapped[bool | None] = mapped_column(Boolean)
    # notification
    channel: Mapped[str | None] = mapped_column(String(16))
    notification_type: Mapped[str | None] = mapped_column(String(64))
    # subscription
    subscription_id: Mapped[str | None] = mapped_column(String(128))
    plan: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(16))
    currency: Mapped[str | None] = mapped_column(String(3))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # credit_transaction (amount is shared with subscription)
    customer_id: Mapped[str | None] = mapped_column(String(128))
    credit_type: Mapped[str | None] = mapped_column(String(16))
    credits: Mapped[int | None] = mapped_column(BigInteger)
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 4))
    # http_request
    method: Mapped[str | None] = mapped_column(String(8))
    endpoint: Mapped[str | None] = mapped_column(String(200))
    http_status: Mapped[int | None] = mapped_column(SmallInteger)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    # gauge_report
    source: Mapped[str | None] = mapped_column(String(64))
    websocket_connections: Mapped[int | None] = mapped_column(Integer)
    cache_hits: Mapped[int | None] = mapped_column(BigInteger)
    cache_misses: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        # Window scans: aggregations read one kind over [start, end).
        Index("ix_metric_events_kind_occurred_at", "kind", "occurred_at"),
        # Zone and firm performance read only panic requests of one window.
        Index(
            "ix_metric_events_panic_window",
            "occurred_at",
            "zone",
            "firm_id",
            postgresql_where=text("kind = 'panic_request'"),
            sqlite_where=text("kind = 'panic_request'"),
        ),
        Index(
            "ix_metric_events_subscription",
            "subscription_id",
            "occurred_at",
            postgresql_where=text("kind = 'subscription'"),
            sqlite_where=text("kind = 'subscription'"),
        ),
    )


class LabelValue(Base):
    """A label value admitted under its dimension's cap, shared by every worker.

    Keeping the admitted set in the database makes the cap hold across
    processes and hosts: a value seen first anywhere is admitted everywhere,
    and a value past the cap is `other` everywhere.
    """

    __tablename__ = "label_values"

    dimension: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(200), primary_key=True)
    admitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
