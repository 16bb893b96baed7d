"""The daily cleanup: raw events past retention become daily rollups, then go, in bounded batches.

Each batch is one transaction of two statements: a `DELETE ... RETURNING`
of at most `batch_size` events, and an upsert that adds exactly the
returned rows to `daily_event_rollups`. So the rollups always equal the raw
rows they replaced, even if the cleanup dies half way or two run at once
(a row is returned by one DELETE only), and no lock is held longer than
one batch takes.

The raw retention cutoff is a UTC midnight, so every day before it is
rolled up whole. A subscription's latest event is kept past the cutoff
while the subscription may still be active (it is the subscription's
state); it is rolled up once superseded or ended.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, exists, inspect, literal_column, or_, select, tuple_
from sqlalchemy.orm import Session, aliased

from app.aggregations.subscriptions import ENDING_ACTIONS
from app.db.models import Base, DailyEventRollup, MetricEvent, RejectedEvent
from app.db.upsert import insert_for
from app.windows import as_utc

SessionFactory = Callable[[], AbstractContextManager[Session]]

#: Dimensions of a rollup: '' (0 for http_status) where an event has none.
DIMENSIONS = tuple(
    column.name for column in inspect(DailyEventRollup).primary_key if column.name not in ("day", "kind")
)
_ABSENT: dict[str, object] = {name: 0 if name == "http_status" else "" for name in DIMENSIONS}
MEASURES = tuple(column.name for column in inspect(DailyEventRollup).columns if not column.primary_key)
_RETURNED = (
    MetricEvent.kind,
    MetricEvent.occurred_at,
    *(MetricEvent.__table__.c[name] for name in DIMENSIONS),
    MetricEvent.success,
    MetricEvent.account_locked,
    MetricEvent.response_time_seconds,
    MetricEvent.credits,
    MetricEvent.amount,
    MetricEvent.duration_seconds,
    MetricEvent.request_count,
    MetricEvent.cache_hits,
    MetricEvent.cache_misses,
)
_ROWS_PER_UPSERT = 500


@dataclass
class PurgeReport:
    """Rows each batch deleted, in order (the last one found nothing left)."""

    batches: list[int] = field(default_factory=list)

    @property
    def deleted(self) -> int:
        """Rows deleted in all."""
        return sum(self.batches)


def event_cutoff(now: datetime, retention_days: int) -> datetime:
    """Raw events before this UTC midnight are past their retention."""
    return datetime.combine((as_utc(now) - timedelta(days=retention_days)).date(), time(), tzinfo=UTC)


def rollup_key(row: Any) -> tuple[Any, ...]:
    """The rollup a deleted event adds to: its UTC day, its kind and its dimensions."""
    dimensions = ((getattr(row, name), _ABSENT[name]) for name in DIMENSIONS)
    return (
        as_utc(row.occurred_at).date(),
        row.kind,
        *(absent if value is None else value for value, absent in dimensions),
    )


def rollups_of(rows: Iterable[Any]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Fold events (with the `_RETURNED` columns) into rollup measures by rollup key."""
    rollups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        measures = rollups.setdefault(rollup_key(row), dict.fromkeys(MEASURES, 0) | {"amount": Decimal(0)})
        # A summary row stands for its requests: an http_summary rollup counts requests, as http_request's does.
        measures["events"] += 1 if row.request_count is None else row.request_count
        measures["failures"] += row.success is False
        measures["lockouts"] += bool(row.account_locked)
        if row.response_time_seconds is not None:
            measures["response_time_count"] += 1
            measures["response_time_sum"] += row.response_time_seconds
        measures["credits"] += row.credits or 0
        measures["amount"] += row.amount or 0
        measures["duration_sum"] += row.duration_seconds or 0.0
        measures["cache_hits"] += row.cache_hits or 0
        measures["cache_misses"] += row.cache_misses or 0
    return rollups


def _add_to_rollups(session: Session, rollups: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    keys = ("day", "kind", *DIMENSIONS)
    values = [dict(zip(keys, key, strict=True)) | measures for key, measures in rollups.items()]
    table = DailyEventRollup.__table__
    for first in range(0, len(values), _ROWS_PER_UPSERT):
        statement = insert_for(session, DailyEventRollup).values(values[first : first + _ROWS_PER_UPSERT])
        added = {name: table.c[name] + statement.excluded[name] for name in MEASURES}
        session.execute(statement.on_conflict_do_update(index_elements=list(keys), set_=added))


def _deletable(kind: str, cutoff: datetime, now: datetime) -> ColumnElement[bool]:
    past = and_(MetricEvent.kind == literal_column(f"'{kind}'"), MetricEvent.occurred_at < cutoff)
    if kind != "subscription":
        return past
    # Order of a subscription's events: (occurred_at, event_id), as in app.aggregations.subscriptions.
    other = aliased(MetricEvent)
    sibling = and_(other.kind == literal_column("'subscription'"), other.subscription_id == MetricEvent.subscription_id)
    same_time = other.occurred_at == MetricEvent.occurred_at
    newer = exists().where(
        sibling,
        or_(other.occurred_at > MetricEvent.occurred_at, and_(same_time, other.event_id > MetricEvent.event_id)),
    )
    older = exists().where(
        sibling,
        or_(other.occurred_at < MetricEvent.occurred_at, and_(same_time, other.event_id < MetricEvent.event_id)),
    )
    ended = or_(
        MetricEvent.action.in_(ENDING_ACTIONS),
        and_(MetricEvent.expires_at.is_not(None), MetricEvent.expires_at <= now),
    )
    # Superseded, or the subscription's last event and it has ended. An ended
    # last event waits until its older siblings are gone (a later batch), so
    # no batch leaves an old purchase looking like the current state.
    return and_(past, or_(newer, and_(~older, ended)))


def purge_events(
    session_factory: SessionFactory, *, kinds: Sequence[str], cutoff: datetime, now: datetime, batch_size: int
) -> PurgeReport:
    """Roll up and delete events of `kinds` before `cutoff`, at most `batch_size` per transaction."""
    cutoff, now = as_utc(cutoff), as_utc(now)
    report = PurgeReport()
    for kind in kinds:
        while True:
            batch = select(MetricEvent.event_id).where(_deletable(kind, cutoff, now)).limit(batch_size).correlate(None)
            with session_factory() as session:
                rows = session.execute(
                    delete(MetricEvent).where(MetricEvent.event_id.in_(batch.scalar_subquery())).returning(*_RETURNED)
                ).all()
                if rows:
                    _add_to_rollups(session, rollups_of(rows))
            report.batches.append(len(rows))
            if not rows:
                break
    return report


def purge_rows(
    session_factory: SessionFactory, *, model: type[Base], where: ColumnElement[bool], batch_size: int
) -> PurgeReport:
    """Delete `model` rows matching `where`, at most `batch_size` per transaction (by primary key)."""
    key = list(inspect(model).primary_key)
    report = PurgeReport()
    while True:
        batch = select(*key).where(where).limit(batch_size).correlate(None)
        with session_factory() as session:
            deleted = int(session.execute(delete(model).where(tuple_(*key).in_(batch))).rowcount)  # type: ignore[attr-defined]
        report.batches.append(deleted)
        if deleted < batch_size:
            return report


def purge_rejected(session_factory: SessionFactory, *, cutoff: datetime, batch_size: int) -> PurgeReport:
    """Delete rejected payloads kept since before `cutoff` (the raw events' retention), in bounded batches."""
    return purge_rows(
        session_factory, model=RejectedEvent, where=RejectedEvent.rejected_at < cutoff, batch_size=batch_size
    )


def compact_metric_files(directory: Path) -> dict[str, int] | None:
    """Fold this host's dead processes' metric files into the archive (app.metrics.multiproc.compact).

    A daily pass on top of the endpoint's housekeeper, which compacts every
    few seconds; only processes proven dead by their lease are merged, and
    only once their pending counts are settled (compact itself refuses).
    """
    from app.metrics.multiproc import compact
    from app.store import resolve_attempt

    if not directory.is_dir():
        return None
    report = compact(directory, resolve=resolve_attempt)
    return {
        "merged_processes": len(report.merged_pids),
        "removed_files": len(report.removed_files),
        "bytes_before": report.bytes_before,
        "bytes_after": report.bytes_after,
        "unproven_processes": len(report.unproven_pids),
        "unresolved_processes": len(report.unresolved_pids),
    }
