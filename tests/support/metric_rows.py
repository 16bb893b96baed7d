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


def _rows_of(kind: str, when: st.SearchStrategy[datetime], **columns: st.SearchStrategy[Any]) -> Any:
    return st.builds(lambda t, i, c: row(kind, t, event_id=i, **c), when, st.uuids(), st.fixed_dictionaries(columns))


def events_of_every_kind(cutoff: datetime, now: datetime) -> Any:
    """Rows of every kind from three days before `cutoff` to a day after, in whole minutes (instants repeat)."""
    when = st.integers(-3 * 1440, 1440).map(lambda minutes: cutoff + timedelta(minutes=minutes))
    money_or_none = st.none() | st.decimals(0, 1000, places=2, allow_nan=False)
    return st.one_of(
        _rows_of(
            "panic_request",
            when,
            service_type=st.just("fire"),
            status=st.sampled_from(["requested", "completed", "prank"]),
            zone=st.sampled_from(["a", "b"]),
            firm_id=st.sampled_from(["f1", None]),
            response_time_seconds=st.none() | st.floats(0, 3600),
        ),
        _rows_of(
            "auth",
            when,
            user_type=st.sampled_from(["guest", "admin"]),
            success=st.booleans(),
            account_locked=st.booleans(),
        ),
        _rows_of(
            "notification",
            when,
            channel=st.sampled_from(["sms", "push"]),
            status=st.sampled_from(["sent", "failed"]),
            notification_type=st.just("panic_update"),
        ),
        _rows_of(
            "subscription",
            when,
            subscription_id=st.sampled_from(["s1", "s2", "s3"]),
            plan=st.sampled_from(["basic", "premium"]),
            action=st.sampled_from(["purchased", "renewed", "cancelled", "expired"]),
            amount=money_or_none,
            currency=st.sampled_from(["ZAR", None]),
            expires_at=st.none() | st.integers(-40, 40).map(lambda d: now + timedelta(days=d)),
        ),
        _rows_of(
            "credit_transaction",
            when,
            customer_id=st.just("c"),
            credit_type=st.sampled_from(["purchase", "spend"]),
            credits=st.integers(0, 100),
            amount=money_or_none,
        ),
        _rows_of(
            "prank_detection",
            when,
            request_id=st.just("r"),
            zone=st.just("a"),
            detector=st.sampled_from(["repeat_caller", "location_mismatch"]),
        ),
        _rows_of(
            "http_request",
            when,
            method=st.just("GET"),
            endpoint=st.just("/api/v1/panic"),
            http_status=st.sampled_from([200, 500]),
            duration_seconds=st.floats(0, 30),
        ),
        _rows_of(
            "gauge_report",
            when,
            source=st.just("web"),
            websocket_connections=st.just(3),
            cache_hits=st.integers(0, 50),
            cache_misses=st.integers(0, 50),
        ),
    )


def far_past_window(seed: int) -> datetime:
    """An aligned five-minute window start in 2001-2020 that no other test writes to."""
    return datetime(2001, 1, 1, tzinfo=UTC) + timedelta(minutes=5 * (seed % (20 * 365 * 288)))
