"""Scheduled windows: the beat fires once per aligned window, a run is keyed on the window it was sent for,
and a claim taken over by another run cannot be finished by its stale owner."""

from __future__ import annotations

import itertools
import pickle
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import get_settings
from app.db.models import ScheduledJobRun
from app.jobs import refresh_subscriptions
from app.locks import claim_window, finish_window
from app.windows import as_utc, window_start
from beat_schedule import AlignedSchedule
from tests.support.db import committing_factory
from tests.support.metric_rows import far_past_window

START = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


class Clock:
    """A settable clock for the schedule's `nowfun`."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def simulate_beat(
    interval: int, offset: float, start: datetime, delays: list[float], max_interval: float = 5.0
) -> list[datetime]:
    """Drive an AlignedSchedule the way celery beat does (check, send when due, sleep), late by `delays`.

    Returns the send times (what the `published_at` header carries).
    """
    clock = Clock(start)
    schedule = AlignedSchedule(timedelta(seconds=interval), timedelta(seconds=offset), nowfun=clock)
    last_run_at = start  # a new entry's last run is the beat's start
    sent = []
    for delay in delays:
        due, next_check = schedule.is_due(last_run_at)
        if due:
            sent.append(clock.now)
            last_run_at = clock.now
            due, next_check = schedule.is_due(last_run_at)
        # The beat sleeps until the next check (at most max_interval) and wakes up late.
        clock.now += timedelta(seconds=min(next_check, max_interval) + delay)
    return sent


@settings(max_examples=200, deadline=None)
@given(
    interval=st.sampled_from([1, 10, 60, 300]),
    offset_share=st.floats(min_value=0, max_value=0.5),
    start_second=st.floats(min_value=0, max_value=86_400, allow_nan=False),
    delays=st.lists(st.floats(min_value=0, max_value=0.9, allow_nan=False), min_size=50, max_size=400),
)
def test_the_beat_fires_once_in_every_window_however_late_it_wakes(
    interval: int, offset_share: float, start_second: float, delays: list[float]
) -> None:
    """Whatever the beat's lateness (under a second per wake-up), each window's run is sent once, in that window."""
    offset = interval * offset_share
    start = START + timedelta(seconds=start_second)
    sent = simulate_beat(interval, offset, start, [d * min(interval, 5) for d in delays])
    windows = [window_start(moment - timedelta(seconds=offset), interval) for moment in sent]
    assert windows == sorted(set(windows))  # never twice in a window
    steps = {(later - earlier).total_seconds() for earlier, later in itertools.pairwise(windows)}
    assert steps <= {float(interval)}  # never a window skipped
    for moment, window in zip(sent, windows, strict=True):
        assert window + timedelta(seconds=offset) <= moment  # never early


def test_a_schedule_survives_the_beats_shelve() -> None:
    """The beat pickles schedules into its shelve: interval and offset come back equal."""
    schedule = AlignedSchedule(timedelta(seconds=300), timedelta(seconds=30))
    assert pickle.loads(pickle.dumps(schedule)) == schedule  # noqa: S301 - our own bytes


def test_a_run_started_just_after_a_boundary_keeps_the_window_it_was_sent_for(db_session: Session) -> None:
    """Sent at 12:00:59.7 and started at 12:01:00.2, a run is 12:00's; the run sent at 12:01:59.7 still does 12:01.

    Keyed on the time each run starts, both would be 12:01's: the second is
    skipped and 12:00 never refreshed.
    """
    minute = far_past_window(int(uuid.uuid4().int % 100_000)) + timedelta(minutes=1)
    settings = get_settings().model_copy(update={"subscription_refresh_interval_seconds": 60})
    factory = committing_factory(db_session)
    runs = [
        (minute - timedelta(milliseconds=300), minute + timedelta(milliseconds=200)),
        (minute + timedelta(seconds=59, milliseconds=700), minute + timedelta(seconds=59, milliseconds=900)),
    ]
    results = [
        refresh_subscriptions(scheduled_at=sent, now=started, settings=settings, session_factory=factory)
        for sent, started in runs
    ]
    assert [r.done for r in results] == [(minute - timedelta(minutes=1),), (minute,)]
    assert [r.skipped for r in results] == [(), ()]


def test_a_stale_owner_cannot_finish_a_window_another_run_took_over(db_session: Session) -> None:
    """A cleanup presumed dead past its lease finishes late: the window stays the new owner's, unfinished."""
    job = f"cleanup-{uuid.uuid4().hex[:8]}"
    window = far_past_window(7)
    factory = committing_factory(db_session)
    with factory() as session:
        assert claim_window(session, job=job, window=window, now=window, owner="host-a:1", lease_seconds=60)
    later = window + timedelta(seconds=61)
    with factory() as session:
        assert claim_window(session, job=job, window=window, now=later, owner="host-b:2", lease_seconds=60)
    with factory() as session:
        assert not finish_window(session, job=job, window=window, now=later, owner="host-a:1")
    claim = db_session.execute(select(ScheduledJobRun).where(ScheduledJobRun.job == job)).scalar_one()
    assert (claim.owner, claim.finished_at) == ("host-b:2", None)
    with factory() as session:
        assert finish_window(session, job=job, window=window, now=later, owner="host-b:2")
    db_session.refresh(claim)
    assert claim.finished_at is not None
    assert as_utc(claim.finished_at) == later
