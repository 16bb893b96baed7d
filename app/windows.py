"""Time windows of the scheduled jobs, in UTC.

Windows are aligned to the Unix epoch, hence to midnight UTC for any length
that divides a day: the five-minute window of 12:03 is 12:00-12:05.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime (as SQLite returns them) is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def window_start(moment: datetime, seconds: int) -> datetime:
    """The start of the aligned window of `seconds` that holds `moment`."""
    stamp = int(as_utc(moment).timestamp())
    return datetime.fromtimestamp(stamp - stamp % seconds, UTC)


def scheduled_window(scheduled_at: datetime | None, now: datetime, seconds: int) -> datetime:
    """The window a run belongs to: the one its schedule fired it for, not the one it happens to run in.

    A run the beat sent at 12:00:59.9 that a worker starts at 12:01:00.2
    belongs to 12:00; keyed on its start it would take 12:01's place, and
    the run sent for 12:01 would find that window done and skip.
    Without a scheduled time (a direct call), the window of `now`.
    """
    return window_start(scheduled_at if scheduled_at is not None else now, seconds)


def next_window_start(moment: datetime, seconds: int, offset_seconds: float = 0) -> datetime:
    """The start of the window after the one holding `moment`, plus `offset_seconds`: a schedule's next due time."""
    offset = timedelta(seconds=offset_seconds)
    return window_start(as_utc(moment) - offset, seconds) + timedelta(seconds=seconds) + offset


def recent_windows(*, now: datetime, seconds: int, count: int, grace_seconds: int = 0) -> list[datetime]:
    """The last `count` windows that ended at least `grace_seconds` before `now`, oldest first."""
    newest = window_start(as_utc(now) - timedelta(seconds=grace_seconds), seconds) - timedelta(seconds=seconds)
    return [newest - timedelta(seconds=seconds * back) for back in reversed(range(count))]
