"""Tables of the metrics store.

`metric_events` holds every kind of event in one table, keyed by `event_id`, so
deduplication is one unique key across kinds and a batch of mixed kinds is
stored with one INSERT. Columns a kind does not use stay NULL; each is typed for
the aggregations that read it.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
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
    # The ingest attempt that inserted the row: the proof, for whoever resolves
    # that attempt's pending counts (app.metrics.pending), that it committed.
    stored_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)

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
    # http_summary (and method, endpoint, http_status; duration_seconds is the sum)
    request_count: Mapped[int | None] = mapped_column(Integer)
    duration_buckets: Mapped[str | None] = mapped_column(Text)  # JSON: the count of each bucket
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


class RejectedEvent(Base):
    """A payload that failed validation, kept with its reason so an operator can fix and replay it.

    Keyed by the message that carried it and its position there, so a
    redelivered message stores (and counts) its rejections once.
    """

    __tablename__ = "rejected_events"

    message_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)  # JSON text, as received
    rejected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    stored_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, index=True)

    # Retention scans by age; operators list by reason.
    __table_args__ = (
        Index("ix_rejected_events_rejected_at", "rejected_at"),
        Index("ix_rejected_events_reason", "reason", "rejected_at"),
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


# --- scheduled jobs: performance snapshots, the archive, once-per-window claims ---


class PerformanceSnapshot(Base):
    """How one zone or firm performed in one aligned window (see app.aggregations.performance).

    Keyed by subject and window: re-aggregating a window replaces its rows.
    Ratios and percentiles are NULL when the window has nothing to compute them from.
    """

    __tablename__ = "performance_snapshots"

    subject_type: Mapped[str] = mapped_column(String(8), primary_key=True)  # "zone" or "firm"
    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    requests: Mapped[int] = mapped_column(Integer)
    completed: Mapped[int] = mapped_column(Integer)
    cancelled: Mapped[int] = mapped_column(Integer)
    pranks: Mapped[int] = mapped_column(Integer)
    response_time_p50: Mapped[float | None] = mapped_column(Float)
    response_time_p95: Mapped[float | None] = mapped_column(Float)
    completion_ratio: Mapped[float | None] = mapped_column(Float)
    prank_ratio: Mapped[float | None] = mapped_column(Float)
    computed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    # Replacing one window and the retention purge read by window, not by subject.
    __table_args__ = (Index("ix_performance_snapshots_window", "window_start", "subject_type"),)


class DailyEventRollup(Base):
    """Events past their retention, counted per UTC day and dimensions: the archive.

    Written by the cleanup in the transaction that deletes the raw events it
    counts, so the rollups always equal the raw rows they replaced. Dimension
    columns hold '' (0 for http_status) where the event kind has none, since
    a primary key column cannot be NULL. Measures are additive.
    """

    __tablename__ = "daily_event_rollups"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    service_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    zone: Mapped[str] = mapped_column(String(128), primary_key=True)
    firm_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    detector: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    notification_type: Mapped[str] = mapped_column(String(64), primary_key=True)
    plan: Mapped[str] = mapped_column(String(64), primary_key=True)
    action: Mapped[str] = mapped_column(String(16), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    credit_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    method: Mapped[str] = mapped_column(String(8), primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(200), primary_key=True)
    http_status: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    source: Mapped[str] = mapped_column(String(64), primary_key=True)

    events: Mapped[int] = mapped_column(BigInteger)
    failures: Mapped[int] = mapped_column(BigInteger)  # auth: success is false
    lockouts: Mapped[int] = mapped_column(BigInteger)  # auth: account_locked
    response_time_count: Mapped[int] = mapped_column(BigInteger)
    response_time_sum: Mapped[float] = mapped_column(Float)
    credits: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[Decimal] = mapped_column(Numeric(20, 4))
    duration_sum: Mapped[float] = mapped_column(Float)  # http_request
    cache_hits: Mapped[int] = mapped_column(BigInteger)
    cache_misses: Mapped[int] = mapped_column(BigInteger)


class ScheduledJobRun(Base):
    """One scheduled job's claim on one window: the key that makes a job run once per window.

    A run inserts its (job, window_start) row before working; a second run
    (another beat, a redelivery) finds the row and skips. See app.locks.
    """

    __tablename__ = "scheduled_job_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    owner: Mapped[str] = mapped_column(String(200))
