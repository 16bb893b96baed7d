"""Zone and firm performance over one window: counts, response-time percentiles, ratios.

Over the panic request events whose `occurred_at` is in [start, end):

- requests: events with status `requested` (new panic requests);
- completed, cancelled, pranks: events with that status;
- response time p50 and p95: over the events that carry a response time,
  with linear interpolation (PostgreSQL's `percentile_cont`, numpy's default);
- completion ratio and prank ratio: completed (pranks) over the requests
  that ended in the window (completed + cancelled + pranks); None when none
  ended. Status changes arrive as separate events, so the ended requests,
  not the `requested` events of the same five minutes, are the denominator.

PostgreSQL computes counts and percentiles in one GROUP BY that reads only
the window (the partial index `ix_metric_events_panic_window`). SQLite has no
`percentile_cont`: one query fetches the window's rows (five minutes of panic
requests is small) and `percentile_cont` below applies PostgreSQL's formula
in the same order, so both databases give the same answer to the last bit.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, delete, func, literal_column, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.db.models import MetricEvent, PerformanceSnapshot
from app.db.upsert import insert_for

SubjectType = Literal["zone", "firm"]
SUBJECT_TYPES: tuple[SubjectType, ...] = ("zone", "firm")
QUANTILES = (0.5, 0.95)
ENDED = ("completed", "cancelled", "prank")
_ROWS_PER_STATEMENT = 500


@dataclass(frozen=True)
class PerformanceRow:
    """One zone's or firm's figures over one window."""

    subject: str
    requests: int
    completed: int
    cancelled: int
    pranks: int
    response_time_p50: float | None
    response_time_p95: float | None

    @property
    def ended(self) -> int:
        """Requests that reached an outcome in the window."""
        return self.completed + self.cancelled + self.pranks

    @property
    def completion_ratio(self) -> float | None:
        """Completed over ended; None when nothing ended."""
        return self.completed / self.ended if self.ended else None

    @property
    def prank_ratio(self) -> float | None:
        """Pranks over ended; None when nothing ended."""
        return self.pranks / self.ended if self.ended else None


def percentile_cont(ordered: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's `percentile_cont(fraction)` of ascending `ordered`, operation for operation."""
    if not ordered:
        return None
    position = fraction * (len(ordered) - 1)
    lower, upper = math.floor(position), math.ceil(position)
    if lower == upper:
        return ordered[lower]
    low = ordered[lower]
    return low + (position - lower) * (ordered[upper] - low)


def subject_column(subject_type: SubjectType) -> InstrumentedAttribute[str | None]:
    """The `metric_events` column a subject type groups by."""
    return MetricEvent.zone if subject_type == "zone" else MetricEvent.firm_id


def _window_filter(subject_type: SubjectType, start: datetime, end: datetime) -> tuple[ColumnElement[bool], ...]:
    return (
        # A literal, not a bound parameter, so the planner can prove the
        # partial index's predicate even in a generic (prepared) plan.
        MetricEvent.kind == literal_column("'panic_request'"),
        MetricEvent.occurred_at >= start,
        MetricEvent.occurred_at < end,
        subject_column(subject_type).is_not(None),
    )


def window_query_postgresql(subject_type: SubjectType, start: datetime, end: datetime) -> Any:
    """The one GROUP BY that computes a window on PostgreSQL (the benchmark explains it)."""
    subject = subject_column(subject_type)
    status = MetricEvent.status
    return (
        select(
            subject,
            func.count().filter(status == "requested"),
            func.count().filter(status == "completed"),
            func.count().filter(status == "cancelled"),
            func.count().filter(status == "prank"),
            *[func.percentile_cont(q).within_group(MetricEvent.response_time_seconds) for q in QUANTILES],
        )
        .where(*_window_filter(subject_type, start, end))
        .group_by(subject)
        .order_by(subject)
    )


def _aggregate_in_python(
    session: Session, subject_type: SubjectType, start: datetime, end: datetime
) -> list[PerformanceRow]:
    query = select(subject_column(subject_type), MetricEvent.status, MetricEvent.response_time_seconds).where(
        *_window_filter(subject_type, start, end)
    )
    counts: dict[str, dict[str | None, int]] = defaultdict(lambda: defaultdict(int))
    response_times: dict[str, list[float]] = defaultdict(list)
    for subject, status, response_time in session.execute(query):
        if subject is None:  # excluded by the query; narrows the type
            continue
        counts[subject][status] += 1
        if response_time is not None:
            response_times[subject].append(response_time)
    rows = []
    for subject in sorted(counts):
        ordered = sorted(response_times[subject])
        by_status = counts[subject]
        rows.append(
            PerformanceRow(
                subject,
                by_status["requested"],
                by_status["completed"],
                by_status["cancelled"],
                by_status["prank"],
                *(percentile_cont(ordered, q) for q in QUANTILES),
            )
        )
    return rows


def aggregate_window(
    session: Session, *, subject_type: SubjectType, start: datetime, end: datetime
) -> list[PerformanceRow]:
    """Every zone's (or firm's) figures over [start, end), ordered by subject."""
    if session.get_bind().dialect.name != "postgresql":
        return _aggregate_in_python(session, subject_type, start, end)
    result = session.execute(window_query_postgresql(subject_type, start, end))
    return [PerformanceRow(*row) for row in result]


def save_snapshots(
    session: Session, *, subject_type: SubjectType, start: datetime, end: datetime, rows: Sequence[PerformanceRow]
) -> None:
    """Make `rows` the window's snapshots: upsert them, drop the window's other subjects."""
    values = [
        {
            "subject_type": subject_type,
            "subject": row.subject,
            "window_start": start,
            "window_end": end,
            "requests": row.requests,
            "completed": row.completed,
            "cancelled": row.cancelled,
            "pranks": row.pranks,
            "response_time_p50": row.response_time_p50,
            "response_time_p95": row.response_time_p95,
            "completion_ratio": row.completion_ratio,
            "prank_ratio": row.prank_ratio,
        }
        for row in rows
    ]
    for first in range(0, len(values), _ROWS_PER_STATEMENT):
        statement = insert_for(session, PerformanceSnapshot).values(values[first : first + _ROWS_PER_STATEMENT])
        replaced = {
            key: statement.excluded[key] for key in values[0] if key not in ("subject_type", "subject", "window_start")
        }
        session.execute(
            statement.on_conflict_do_update(
                index_elements=["subject_type", "subject", "window_start"],
                set_={**replaced, "computed_at": func.now()},
            )
        )
    session.execute(
        delete(PerformanceSnapshot).where(
            PerformanceSnapshot.subject_type == subject_type,
            PerformanceSnapshot.window_start == start,
            PerformanceSnapshot.subject.not_in([row.subject for row in rows]),
        )
    )
