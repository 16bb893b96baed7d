"""The beat schedule: every scheduled job, how often it runs, and where it goes.

Intervals come from the settings. Each entry goes to the `scheduled` queue
with an expiry shorter than its interval: a run still waiting when the next
one is due is dropped by the worker, so a backlog never stacks runs of the
same job (and the job's window claim makes a late one harmless anyway).

Every job fires once per aligned window (`AlignedSchedule`), at the
window's start (performance jobs: once the window that just ended is past
its grace), and the task keys its claim on the time the beat sent it, not
on the time a worker runs it. Celery's plain interval schedule counts from
the previous run, so its firing time drifts through the window; where it
crosses a boundary one window gets two runs (the second skipped) and the
next none.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from celery.schedules import schedstate, schedule

from app.config import Settings
from app.windows import next_window_start, window_start

TASK_PREFIX = "panic_metrics.scheduled."
#: Share of its interval a run may wait in the queue before it is dropped.
EXPIRY_SHARE = 0.9


def intervals(settings: Settings) -> dict[str, int]:
    """Each job's interval in seconds."""
    return {
        "refresh_health_metrics": settings.health_refresh_interval_seconds,
        "refresh_subscription_metrics": settings.subscription_refresh_interval_seconds,
        "aggregate_zone_performance": settings.performance_window_seconds,
        "aggregate_firm_performance": settings.performance_window_seconds,
        "cleanup_old_metrics": settings.cleanup_interval_seconds,
    }


class AlignedSchedule(schedule):
    """Due once in every aligned window of `run_every` (epoch-aligned: midnight UTC), `offset` into it."""

    def __init__(self, run_every: timedelta, offset: timedelta = timedelta(0), **kwargs: Any) -> None:
        super().__init__(run_every, **kwargs)
        self.interval = run_every
        self.offset = offset

    def _window(self, moment: datetime) -> datetime:
        return window_start(self.maybe_make_aware(moment) - self.offset, int(self.seconds))

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        """Time until the first due moment after the window `last_run_at` ran in."""
        now = self.maybe_make_aware(self.now())
        last = self.maybe_make_aware(last_run_at)
        due = next_window_start(max(now, last), int(self.seconds), self.offset.total_seconds())
        if self._window(now) > self._window(last):
            return timedelta(0)
        return due - now

    def is_due(self, last_run_at: datetime) -> schedstate:
        """Due when the window of now is later than the window of the last run; next check at the next window."""
        now = self.maybe_make_aware(self.now())
        due = self._window(now) > self._window(last_run_at)
        next_due = next_window_start(now, int(self.seconds), self.offset.total_seconds())
        return schedstate(is_due=due, next=max((next_due - now).total_seconds(), 0.0))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AlignedSchedule):
            return (self.interval, self.offset) == (other.interval, other.offset)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.interval, self.offset))

    def __reduce__(self) -> tuple[Any, ...]:
        # The beat's shelve pickles the schedule: keep the offset.
        return self.__class__, (self.interval, self.offset)


def _offset(job: str, settings: Settings) -> timedelta:
    # A performance window is aggregated once its grace has passed: fire then, not at the boundary.
    if job.startswith("aggregate_"):
        return timedelta(seconds=settings.performance_grace_seconds)
    return timedelta(0)


def build_beat_schedule(settings: Settings, *, queue: str) -> dict[str, dict[str, Any]]:
    """Celery's `beat_schedule`: one entry per job and window, routed to `queue`, expiring before its next run."""
    return {
        job: {
            "task": TASK_PREFIX + job,
            "schedule": AlignedSchedule(timedelta(seconds=seconds), _offset(job, settings)),
            "options": {"queue": queue, "routing_key": queue, "expires": seconds * EXPIRY_SHARE},
        }
        for job, seconds in intervals(settings).items()
    }
