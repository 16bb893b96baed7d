"""Scheduled jobs run each window once: backfill after an outage, operator re-runs, two runs at once."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.orm import Session

from app.aggregations.performance import PerformanceRow, SubjectType
from app.config import Settings, get_settings
from app.db.models import PerformanceSnapshot, ScheduledJobRun
from app.db.session import session_scope
from app.jobs import aggregate_performance, refresh_subscriptions
from app.windows import as_utc, recent_windows
from tests.support.db import committing_factory
from tests.support.metric_rows import Panic, far_past_window, insert_rows, row

WINDOW = timedelta(minutes=5)


class Published:
    """Records what a job would show on the gauges."""

    def __init__(self) -> None:
        self.calls: list[tuple[SubjectType, list[PerformanceRow]]] = []
        self._lock = threading.Lock()

    def __call__(
        self,
        _session: Session,
        *,
        subject_type: SubjectType,
        rows: Sequence[PerformanceRow],
        computed_at: float,  # noqa: ARG002 - the protocol names it
    ) -> None:
        with self._lock:
            self.calls.append((subject_type, list(rows)))


def job_settings(**changes: object) -> Settings:
    defaults = {"performance_window_seconds": 300, "performance_backfill_windows": 4, "performance_grace_seconds": 0}
    return get_settings().model_copy(update=defaults | changes)


def one_event_per_window(zone: str, first: int, count: int, base: datetime) -> list[dict[str, object]]:
    """A completed request with response time 60 + i seconds in each window i."""
    return [
        Panic(zone, None, "completed", 60.0 + i, base + WINDOW * i + timedelta(seconds=1)).as_row()
        for i in range(first, count)
    ]


def zone_snapshots(session: Session, zone: str) -> dict[datetime, int]:
    """Completed requests by window start (UTC) in the zone's snapshots."""
    found = session.execute(select(PerformanceSnapshot).where(PerformanceSnapshot.subject == zone)).scalars()
    return {as_utc(s.window_start): s.completed for s in found}


def test_a_job_that_was_down_fills_in_missed_windows_up_to_the_bound(db_session: Session) -> None:
    """After ten missed windows the job aggregates the last four (the bound), oldest first, and shows the newest."""
    base = far_past_window(3_000)
    insert_rows(db_session, one_event_per_window("backfill", 0, 12, base))
    factory, published = committing_factory(db_session), Published()
    now = base + WINDOW * 10 + timedelta(seconds=1)
    first = aggregate_performance(
        subject_type="zone", now=now, settings=job_settings(), session_factory=factory, publish=published
    )
    assert list(first.done) == [base + WINDOW * i for i in range(6, 10)]
    assert [[r.response_time_p50 for r in rows] for _, rows in published.calls] == [[69.0]]

    again = aggregate_performance(
        subject_type="zone", now=now, settings=job_settings(), session_factory=factory, publish=published
    )
    assert (again.done, again.skipped, len(published.calls)) == ((), (), 1)

    later = aggregate_performance(
        subject_type="zone", now=now + WINDOW * 2, settings=job_settings(), session_factory=factory, publish=published
    )
    assert list(later.done) == [base + WINDOW * 10, base + WINDOW * 11]
    assert len(zone_snapshots(db_session, "backfill")) == 6


def test_a_window_is_aggregated_only_after_its_grace(db_session: Session) -> None:
    """Ten seconds after 12:05 with a 30 s grace, 12:00-12:05 is not due yet; 11:55-12:00 is the newest."""
    base = far_past_window(3_100)
    due = recent_windows(now=base + WINDOW + timedelta(seconds=10), seconds=300, count=1, grace_seconds=30)
    assert due == [base - WINDOW]
    result = aggregate_performance(
        subject_type="zone",
        now=base + WINDOW + timedelta(seconds=10),
        settings=job_settings(performance_grace_seconds=30, performance_backfill_windows=1),
        session_factory=committing_factory(db_session),
        publish=Published(),
    )
    assert list(result.done) == [base - WINDOW]


def test_rerunning_a_window_after_late_events_replaces_its_snapshot(db_session: Session) -> None:
    """An operator's re-run of a done window recomputes it; the gauges change only for the newest window."""
    # Claims committed by other tests (newer windows) are not this test's; hide them in its transaction.
    db_session.execute(delete(ScheduledJobRun))
    base = far_past_window(3_200)
    insert_rows(db_session, one_event_per_window("late", 0, 4, base))
    factory, published = committing_factory(db_session), Published()
    now = base + WINDOW * 4 + timedelta(seconds=1)
    aggregate_performance(
        subject_type="zone", now=now, settings=job_settings(), session_factory=factory, publish=published
    )
    assert zone_snapshots(db_session, "late")[base + WINDOW] == 1

    late = Panic("late", None, "completed", 1.0, base + WINDOW + timedelta(seconds=30))
    insert_rows(db_session, [late.as_row()])
    rerun = aggregate_performance(
        subject_type="zone",
        window=base + WINDOW + timedelta(minutes=2),
        now=now,
        settings=job_settings(),
        session_factory=factory,
        publish=published,
    )
    assert list(rerun.done) == [base + WINDOW]
    assert zone_snapshots(db_session, "late")[base + WINDOW] == 2
    assert len(published.calls) == 1  # an older window: the gauges keep showing the newest

    insert_rows(db_session, [Panic("late", None, "prank", None, base + WINDOW * 3).as_row()])
    aggregate_performance(
        subject_type="zone",
        window=base + WINDOW * 3,
        now=now,
        settings=job_settings(),
        session_factory=factory,
        publish=published,
    )
    assert [(r.completed, r.pranks) for r in published.calls[-1][1]] == [(1, 1)]


@pytest.fixture
def committed_engine(db_engine: Engine) -> Engine:
    """An engine whose work is committed: on PostgreSQL tests use windows and zones of their own."""
    return db_engine


def test_the_job_fired_twice_at_once_runs_each_window_once(committed_engine: Engine) -> None:
    """Two runs at once (two beats) split the windows between them, never both doing one, and show the gauges once."""
    base = far_past_window(uuid.uuid4().int % 1_000_000 + 10_000)
    zone = f"twice-{uuid.uuid4().hex[:8]}"
    with session_scope(committed_engine) as session:
        insert_rows(session, one_event_per_window(zone, 0, 6, base))
    now = base + WINDOW * 6 + timedelta(seconds=1)
    published, results, barrier = Published(), [], threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        results.append(
            aggregate_performance(
                subject_type="zone",
                now=now,
                settings=job_settings(performance_backfill_windows=6),
                session_factory=lambda: session_scope(committed_engine),
                publish=published,
            )
        )

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = [w for r in results for w in r.done]
    assert sorted(done) == [base + WINDOW * i for i in range(6)]
    assert len(set(done)) == len(done)
    assert [[r.completed for r in rows] for _, rows in published.calls] == [[1]]
    with session_scope(committed_engine) as session:
        assert len(zone_snapshots(session, zone)) == 6
        runs = session.execute(
            select(func.count())
            .select_from(ScheduledJobRun)
            .where(
                ScheduledJobRun.job == "aggregate_zone_performance",
                ScheduledJobRun.window_start >= base,
                ScheduledJobRun.window_start < base + WINDOW * 6,
            )
        ).scalar_one()
        assert runs == 6


def test_subscription_refresh_runs_once_per_interval(db_session: Session) -> None:
    """A second refresh in the same minute (a second beat) is skipped; the next minute runs."""
    now = far_past_window(3_300)
    insert_rows(db_session, [row("subscription", now, subscription_id="once", plan="basic", action="purchased")])
    factory = committing_factory(db_session)
    first = refresh_subscriptions(now=now, settings=job_settings(), session_factory=factory)
    second = refresh_subscriptions(now=now + timedelta(seconds=30), settings=job_settings(), session_factory=factory)
    third = refresh_subscriptions(now=now + timedelta(seconds=60), settings=job_settings(), session_factory=factory)
    assert (len(first.done), len(second.skipped), len(third.done)) == (1, 1, 1)
    assert first.detail["active_by_plan"].get("basic", 0) >= 1
