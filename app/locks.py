"""Once per window: a scheduled job claims its window in the database before it works.

`scheduled_job_runs` holds one row per (job, window_start). A run inserts its
row with `ON CONFLICT DO NOTHING`: the run that inserted it owns the window,
any other run (a second beat, a redelivered message) finds the row and skips.
A unique key works the same on PostgreSQL and the embedded SQLite, with no
Redis, and survives restarts, which a lock with a TTL does not.

Two ways to hold a claim:

- in the transaction that does the work (performance windows, refreshes):
  a concurrent claimer of the same window waits for that transaction, then
  sees the row and skips; if the work fails, the rollback frees the window;
- committed first, with a lease (cleanup, whose work spans many
  transactions): a run that dies leaves an unfinished row that another run
  may take over once it is older than the lease. Finishing checks the
  owner, so a run presumed dead that finishes after all cannot mark done a
  window another run has taken over and is still working on.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import ScheduledJobRun
from app.db.upsert import insert_for
from app.windows import as_utc


def claim_window(
    session: Session,
    *,
    job: str,
    window: datetime,
    now: datetime,
    owner: str,
    retake_finished: bool = False,
    lease_seconds: int | None = None,
) -> bool:
    """Claim `job`'s `window` for this run; False if another run holds or held it.

    Must be the first statement of its transaction (SQLite cannot upgrade a
    read transaction to a write once another writer committed).
    `retake_finished` is for an operator's explicit re-run of a done window;
    `lease_seconds` lets a run take over an unfinished claim older than that.
    """
    inserted = session.execute(
        insert_for(session, ScheduledJobRun)
        .values(job=job, window_start=window, started_at=now, finished_at=None, owner=owner[:200])
        .on_conflict_do_nothing(index_elements=["job", "window_start"])
        .returning(ScheduledJobRun.job)
    ).first()
    if inserted is not None:
        return True
    takeover: list[ColumnElement[bool]] = []
    if retake_finished:
        takeover.append(ScheduledJobRun.finished_at.is_not(None))
    if lease_seconds is not None:
        stale = now - timedelta(seconds=lease_seconds)
        takeover.append(and_(ScheduledJobRun.finished_at.is_(None), ScheduledJobRun.started_at < stale))
    if not takeover:
        return False
    # A conditional UPDATE is a compare-and-swap: of two runs taking over the
    # same row, the second re-checks the condition after the first and fails.
    taken = session.execute(
        update(ScheduledJobRun)
        .where(ScheduledJobRun.job == job, ScheduledJobRun.window_start == window, or_(*takeover))
        .values(started_at=now, finished_at=None, owner=owner[:200])
    )
    return bool(taken.rowcount)  # type: ignore[attr-defined]


def finish_window(session: Session, *, job: str, window: datetime, now: datetime, owner: str) -> bool:
    """Mark `job`'s `window` done if `owner` still holds its claim; False if another run took it over."""
    finished = session.execute(
        update(ScheduledJobRun)
        .where(
            ScheduledJobRun.job == job,
            ScheduledJobRun.window_start == window,
            ScheduledJobRun.owner == owner[:200],
        )
        .values(finished_at=now)
    )
    return bool(finished.rowcount)  # type: ignore[attr-defined]


def finished_windows(session: Session, *, job: str, since: datetime) -> set[datetime]:
    """Starts of `job`'s windows from `since` on that are done (in UTC)."""
    rows = session.execute(
        select(ScheduledJobRun.window_start).where(
            ScheduledJobRun.job == job,
            ScheduledJobRun.window_start >= since,
            ScheduledJobRun.finished_at.is_not(None),
        )
    ).scalars()
    return {as_utc(start) for start in rows}


def newest_finished_window(session: Session, *, job: str) -> datetime | None:
    """The start of `job`'s newest done window, if any."""
    newest = session.execute(
        select(func.max(ScheduledJobRun.window_start)).where(
            ScheduledJobRun.job == job, ScheduledJobRun.finished_at.is_not(None)
        )
    ).scalar_one_or_none()
    return None if newest is None else as_utc(newest)
