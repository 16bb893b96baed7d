"""Zone and firm performance of a window equals a plain-Python reference, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from dataclasses import asdict
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app.aggregations.performance import (
    PerformanceRow,
    aggregate_window,
    percentile_cont,
    save_snapshots,
)
from app.db.models import PerformanceSnapshot
from tests.support.db import rolled_back_session
from tests.support.metric_rows import Panic, far_past_window, insert_rows, panics, reference_performance

START = far_past_window(1_000)
END = START + timedelta(minutes=5)
ZONES = ("downtown", "harbour", "old-town")
FIRMS = ("firm-aegis", "firm-bastion")
EVENT_SETS = st.lists(panics(START, zones=ZONES, firms=FIRMS), max_size=40)
DB_SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def as_dicts(rows: list[PerformanceRow]) -> list[dict[str, object]]:
    return [asdict(r) | {"completion_ratio": r.completion_ratio, "prank_ratio": r.prank_ratio} for r in rows]


def assert_matches(actual: list[dict[str, object]], expected: list[dict[str, object]]) -> None:
    assert [a["subject"] for a in actual] == [e["subject"] for e in expected]
    for a, e in zip(actual, expected, strict=True):
        for key, value in e.items():
            if isinstance(value, float):
                # numpy computes the interpolation position as n*q + (1-q) - 1, one rounding off q*(n-1)
                assert a[key] == pytest.approx(value, rel=1e-12, abs=1e-9), key
            else:
                assert a[key] == value, key


def aggregate_both(session: Session, events: list[Panic]) -> dict[str, list[dict[str, object]]]:
    savepoint = session.begin_nested()
    try:
        insert_rows(session, [e.as_row() for e in events])
        return {
            subject_type: as_dicts(aggregate_window(session, subject_type=subject_type, start=START, end=END))
            for subject_type in ("zone", "firm")
        }
    finally:
        savepoint.rollback()


@DB_SETTINGS
@given(events=EVENT_SETS)
def test_zone_and_firm_aggregates_match_the_reference(db_session: Session, events: list[Panic]) -> None:
    """Counts, p50/p95 and ratios per zone and per firm equal numpy and plain Python over the window's events."""
    result = aggregate_both(db_session, events)
    for subject_type in ("zone", "firm"):
        expected = reference_performance(events, subject_type=subject_type, start=START, end=END)
        assert_matches(result[subject_type], expected)


@pytest.mark.integration
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=EVENT_SETS)
def test_sqlite_and_postgresql_give_identical_answers(
    sqlite_engine: Engine, pg_engine: Engine, events: list[Panic]
) -> None:
    """The SQLite path (Python over the window's rows) gives PostgreSQL's percentile_cont to the last bit."""
    with rolled_back_session(sqlite_engine) as lite, rolled_back_session(pg_engine) as pg:
        assert aggregate_both(lite, events) == aggregate_both(pg, events)


def test_window_holds_its_start_and_not_its_end(db_session: Session) -> None:
    """An event at 12:00:00 is in 12:00-12:05; one at 12:05:00 is in the next window."""
    on_start = Panic("edge", None, "completed", 10.0, START)
    on_end = Panic("edge", None, "completed", 20.0, END)
    insert_rows(db_session, [on_start.as_row(), on_end.as_row()])
    (first,) = aggregate_window(db_session, subject_type="zone", start=START, end=END)
    (second,) = aggregate_window(db_session, subject_type="zone", start=END, end=END + timedelta(minutes=5))
    assert (first.completed, first.response_time_p50) == (1, 10.0)
    assert (second.completed, second.response_time_p50) == (1, 20.0)


def test_events_without_a_firm_count_for_their_zone_only(db_session: Session) -> None:
    """A request not yet assigned to a firm is in its zone's figures and in no firm's."""
    insert_rows(db_session, [Panic("unassigned", None, "requested", None, START).as_row()])
    zones = aggregate_window(db_session, subject_type="zone", start=START, end=END)
    assert [(z.subject, z.requests) for z in zones] == [("unassigned", 1)]
    assert aggregate_window(db_session, subject_type="firm", start=START, end=END) == []


def test_ratios_are_none_when_no_request_ended() -> None:
    """A window with requests but no outcome has no completion or prank ratio (not zero)."""
    row = PerformanceRow(
        "z", requests=3, completed=0, cancelled=0, pranks=0, response_time_p50=None, response_time_p95=None
    )
    assert row.completion_ratio is None
    assert row.prank_ratio is None


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    fraction=st.sampled_from([0.0, 0.05, 0.5, 0.9, 0.95, 0.99, 1.0]) | st.floats(0, 1),
)
def test_percentile_cont_matches_numpy_linear(values: list[float], fraction: float) -> None:
    """The Python percentile_cont equals numpy's 'linear' method (PostgreSQL's interpolation)."""
    expected = float(np.quantile(values, fraction, method="linear"))
    assert percentile_cont(sorted(values), fraction) == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_percentile_of_nothing_is_none() -> None:
    """No response times, no percentile."""
    assert percentile_cont([], 0.95) is None


def snapshots(session: Session) -> dict[str, tuple[int, float | None]]:
    found = session.execute(
        select(PerformanceSnapshot).where(
            PerformanceSnapshot.window_start == START, PerformanceSnapshot.subject_type == "zone"
        )
    ).scalars()
    return {s.subject: (s.requests, s.response_time_p95) for s in found}


def test_saving_a_window_again_replaces_its_snapshots(db_session: Session) -> None:
    """Re-aggregating a window updates its rows and drops subjects it no longer has: never a duplicate."""
    first = [PerformanceRow("a", 1, 0, 0, 0, None, None), PerformanceRow("b", 2, 1, 0, 0, 5.0, 9.0)]
    save_snapshots(db_session, subject_type="zone", start=START, end=END, rows=first)
    assert snapshots(db_session) == {"a": (1, None), "b": (2, 9.0)}
    again = [PerformanceRow("b", 3, 2, 0, 1, 4.0, 8.5)]
    save_snapshots(db_session, subject_type="zone", start=START, end=END, rows=again)
    assert snapshots(db_session) == {"b": (3, 8.5)}
    stored = db_session.execute(select(PerformanceSnapshot).where(PerformanceSnapshot.subject == "b")).scalar_one()
    assert stored.completion_ratio == pytest.approx(2 / 3)
    assert math.isclose(stored.prank_ratio or 0, 1 / 3)
