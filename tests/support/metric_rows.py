"""Rows of `metric_events` for the scheduled-job tests, written straight to the table, and plain-Python references.

The tests of the aggregations write rows directly (not through app.ingest)
so they can place events anywhere in time and keep exactly what they wrote.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.orm import Session

from app.db.models import MetricEvent

PANIC_STATUSES = ("requested", "accepted", "en_route", "arrived", "completed", "cancelled", "prank")


def row(kind: str, occurred_at: datetime, **columns: Any) -> dict[str, Any]:
    """One `metric_events` row; columns not given stay NULL."""
    return {"event_id": columns.pop("event_id", uuid.uuid4()), "kind": kind, "occurred_at": occurred_at, **columns}


def insert_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows (each may name different columns), grouped so every statement has one shape."""
    shapes: dict[frozenset[str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        shapes[frozenset(r)].append(r)
    for group in shapes.values():
        session.execute(insert(MetricEvent), group)


@dataclass(frozen=True)
class Panic:
    """A panic request event as the tests generate it."""

    zone: str
    firm_id: str | None
    status: str
    response_time: float | None
    occurred_at: datetime

    def as_row(self) -> dict[str, Any]:
        return row(
            "panic_request",
            self.occurred_at,
            service_type="security",
            status=self.status,
            zone=self.zone,
            firm_id=self.firm_id,
            response_time_seconds=self.response_time,
        )


def panics(start: datetime, *, zones: Sequence[str], firms: Sequence[str], before: int = 60, after: int = 360) -> Any:
    """Panic requests from `before` seconds before `start` to `after` seconds past it (millisecond steps)."""
    return st.builds(
        Panic,
        zone=st.sampled_from(zones),
        firm_id=st.sampled_from([*firms, None]),
        status=st.sampled_from(PANIC_STATUSES),
        response_time=st.none() | st.floats(0, 3600, allow_nan=False) | st.sampled_from([0.0, 60.0, 60.0, 180.5]),
        occurred_at=st.integers(-before * 1000, after * 1000).map(lambda ms: start + timedelta(milliseconds=ms)),
    )


def reference_performance(
    events: Iterable[Panic], *, subject_type: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Zone or firm figures of [start, end) in plain Python, percentiles by numpy's 'linear' method."""
    groups: dict[str, list[Panic]] = defaultdict(list)
    for event in events:
        subject = event.zone if subject_type == "zone" else event.firm_id
        if subject is not None and start <= event.occurred_at < end:
            groups[subject].append(event)
    out = []
    for subject in sorted(groups):
        group = groups[subject]
        count = {status: sum(e.status == status for e in group) for status in PANIC_STATUSES}
        times = [e.response_time for e in group if e.response_time is not None]
        ended = count["completed"] + count["cancelled"] + count["prank"]
        out.append(
            {
                "subject": subject,
                "requests": count["requested"],
                "completed": count["completed"],
                "cancelled": count["cancelled"],
                "pranks": count["prank"],
                "response_time_p50": float(np.percentile(times, 50, method="linear")) if times else None,
                "response_time_p95": float(np.percentile(times, 95, method="linear")) if times else None,
                "completion_ratio": count["completed"] / ended if ended else None,
                "prank_ratio": count["prank"] / ended if ended else None,
            }
        )
    return out


def far_past_window(seed: int) -> datetime:
    """An aligned five-minute window start in 2001-2020 that no other test writes to."""
    return datetime(2001, 1, 1, tzinfo=UTC) + timedelta(minutes=5 * (seed % (20 * 365 * 288)))


def money(value: float | Decimal | None) -> Decimal:
    """A money value as the column keeps it (4 decimal places)."""
    return Decimal(str(value or 0)).quantize(Decimal("0.0001"))
