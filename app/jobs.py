"""The scheduled jobs: each claims its window (app.locks), does its work once, reports what it did.

Called by the thin tasks of workers/tasks/scheduled.py and by the endpoint's
POST route; knows nothing of Celery. Every function takes keyword arguments
(`now` and `settings` default to the clock and the environment, so tests
pass their own) and a session factory, and returns a `JobResult`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from app.aggregations.gauges import (
    SUBSCRIPTIONS_JOB,
    performance_job,
    set_performance_gauges,
    set_subscription_gauges,
)
from app.aggregations.performance import PerformanceRow, SubjectType, aggregate_window, save_snapshots
from app.aggregations.subscriptions import active_subscriptions_by_plan
from app.cleanup import compact_metric_files, event_cutoff, purge_events, purge_rejected, purge_rows
from app.config import Settings, get_settings
from app.db.models import DailyEventRollup, PerformanceSnapshot, ScheduledJobRun
from app.db.session import get_engine, session_scope, transaction_clock
from app.health import DEFAULT_QUEUES, collect_health, set_health_gauges
from app.locks import claim_window, finish_window, finished_windows, newest_finished_window
from app.metrics import definitions as m
from app.windows import as_utc, recent_windows, scheduled_window, window_start
from panic_metrics_client.events import EVENT_KINDS

log = logging.getLogger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]


class PublishPerformance(Protocol):
    """Shows the newest window's rows, computed at `computed_at` on the database's clock (the gauges, in service)."""

    def __call__(
        self, session: Session, *, subject_type: SubjectType, rows: Sequence[PerformanceRow], computed_at: float
    ) -> None: ...


@dataclass(frozen=True)
class JobResult:
    """What one run of a job did: the windows it ran, those another run held, and figures."""

    job: str
    done: tuple[datetime, ...] = ()
    skipped: tuple[datetime, ...] = ()
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, for task results and the endpoint."""
        return {
            "job": self.job,
            "done": [w.isoformat() for w in self.done],
            "skipped": [w.isoformat() for w in self.skipped],
            **self.detail,
        }


def default_owner() -> str:
    """Who holds a claim, for an operator reading scheduled_job_runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _reported(result: JobResult) -> JobResult:
    m.JOB_WINDOWS.labels(scheduled_job=result.job, outcome="done").inc(len(result.done))
    m.JOB_WINDOWS.labels(scheduled_job=result.job, outcome="skipped").inc(len(result.skipped))
    if result.skipped:
        log.info("windows held by another run", extra={"job": result.job, "skipped": len(result.skipped)})
    return result


def _now(now: datetime | None) -> datetime:
    return as_utc(now) if now is not None else datetime.now(UTC)


def aggregate_performance(
    *,
    subject_type: SubjectType,
    window: datetime | None = None,
    now: datetime | None = None,
    settings: Settings | None = None,
    session_factory: SessionFactory = session_scope,
    owner: str = "",
    publish: PublishPerformance = set_performance_gauges,
) -> JobResult:
    """Aggregate the zone (or firm) performance windows that are due, each once.

    Without `window`: every window of the last PERFORMANCE_BACKFILL_WINDOWS
    that ended PERFORMANCE_GRACE_SECONDS ago and is not done yet, oldest
    first, so a job that was down fills in what it missed. With `window`
    (an operator re-running it after late events): that window, done or not.
    Each window is one transaction: claim, aggregate, replace its
    snapshots. Only the newest window's figures go to the gauges: on a
    schedule, the latest complete window; on a re-run, the window re-run
    if no later one is done.
    """
    settings = settings or get_settings()
    now = _now(now)
    job = performance_job(subject_type)
    owner = owner or default_owner()
    size = timedelta(seconds=settings.performance_window_seconds)
    newest_due: datetime | None = None  # the window whose figures the gauges show, if this run does it
    if window is not None:
        due = [window_start(window, settings.performance_window_seconds)]
    else:
        candidates = recent_windows(
            now=now,
            seconds=settings.performance_window_seconds,
            count=settings.performance_backfill_windows,
            grace_seconds=settings.performance_grace_seconds,
        )
        with session_factory() as session:
            done_before = finished_windows(session, job=job, since=candidates[0])
        due = [start for start in candidates if start not in done_before]
        newest_due = candidates[-1]
    done: list[datetime] = []
    skipped: list[datetime] = []
    newest: tuple[list[PerformanceRow], float] | None = None
    for start in due:
        with session_factory() as session:
            claimed = claim_window(
                session,
                job=job,
                window=start,
                now=now,
                owner=owner,
                retake_finished=window is not None,
            )
            if claimed:
                # Read before the aggregate: the rows see every commit up to it. Across
                # hosts the greatest such time marks the newest figures (app.aggregations.gauges).
                computed_at = transaction_clock(session)
                rows = aggregate_window(session, subject_type=subject_type, start=start, end=start + size)
                save_snapshots(session, subject_type=subject_type, start=start, end=start + size, rows=rows)
                finish_window(session, job=job, window=start, now=now, owner=owner)
                # Only the run that did the newest window sets the gauges, so
                # two runs splitting a backfill cannot leave an older one shown.
                shown = newest_due if window is None else newest_finished_window(session, job=job)
                is_newest = shown == start
        if not claimed:
            skipped.append(start)
            continue
        done.append(start)
        if is_newest:
            newest = (rows, computed_at)
    if newest is not None:
        with session_factory() as session:
            publish(session, subject_type=subject_type, rows=newest[0], computed_at=newest[1])
    subjects = len(newest[0]) if newest is not None else 0
    return _reported(JobResult(job, tuple(done), tuple(skipped), {"subjects": subjects}))


def refresh_subscriptions(
    *,
    now: datetime | None = None,
    scheduled_at: datetime | None = None,
    settings: Settings | None = None,
    session_factory: SessionFactory = session_scope,
    owner: str = "",
) -> JobResult:
    """Set the active subscriptions by plan, once per refresh interval (the window `scheduled_at` falls in)."""
    settings = settings or get_settings()
    now = _now(now)
    job = SUBSCRIPTIONS_JOB
    owner = owner or default_owner()
    window = scheduled_window(scheduled_at, now, settings.subscription_refresh_interval_seconds)
    with session_factory() as session:
        claimed = claim_window(session, job=job, window=window, now=now, owner=owner)
        if claimed:
            computed_at = transaction_clock(session)
            active = active_subscriptions_by_plan(session, now=now)
            finish_window(session, job=job, window=window, now=now, owner=owner)
    if not claimed:
        return _reported(JobResult(job, skipped=(window,)))
    with session_factory() as session:
        set_subscription_gauges(session, active=active, computed_at=computed_at)
    return _reported(JobResult(job, done=(window,), detail={"active_by_plan": active}))


def refresh_health(
    *,
    queues: tuple[str, ...] = DEFAULT_QUEUES,
    now: datetime | None = None,
    scheduled_at: datetime | None = None,
    settings: Settings | None = None,
    session_factory: SessionFactory = session_scope,
    engine: Engine | None = None,
    owner: str = "",
    claim: bool = True,
) -> JobResult:
    """Refresh the dependency, connection, Redis and queue gauges; once per interval unless `claim=False`.

    The claim is committed before the work, and if the database cannot be
    reached to claim it the refresh runs anyway: reporting that the
    database is down is the point.
    """
    settings = settings or get_settings()
    now = _now(now)
    job = "refresh_health_metrics"
    owner = owner or default_owner()
    window = scheduled_window(scheduled_at, now, settings.health_refresh_interval_seconds)
    if claim:
        try:
            with session_factory() as session:
                claimed = claim_window(session, job=job, window=window, now=now, owner=owner)
                finish_window(session, job=job, window=window, now=now, owner=owner)
        except SQLAlchemyError:
            log.warning("health refresh runs unclaimed: the database is unreachable", extra={"job": job})
            claimed = True
        if not claimed:
            return _reported(JobResult(job, skipped=(window,)))
    report = collect_health(settings=settings, engine=engine or get_engine(), queues=queues)
    set_health_gauges(report)
    return _reported(JobResult(job, done=(window,) if claim else (), detail={"report": report.as_dict()}))


def cleanup_old_metrics(
    *,
    now: datetime | None = None,
    scheduled_at: datetime | None = None,
    settings: Settings | None = None,
    session_factory: SessionFactory = session_scope,
    owner: str = "",
    metrics_dir: Path | None = None,
) -> JobResult:
    """Roll up and delete raw events past retention, drop old snapshots, rollups and claims, compact metric files."""
    settings = settings or get_settings()
    now = _now(now)
    job = "cleanup_old_metrics"
    owner = owner or default_owner()
    window = scheduled_window(scheduled_at, now, settings.cleanup_interval_seconds)
    with session_factory() as session:
        claimed = claim_window(
            session,
            job=job,
            window=window,
            now=now,
            owner=owner,
            lease_seconds=settings.job_lease_seconds,
        )
    if not claimed:
        return _reported(JobResult(job, skipped=(window,)))
    batch = settings.cleanup_batch_size
    events = purge_events(
        session_factory,
        kinds=EVENT_KINDS,
        cutoff=event_cutoff(now, settings.event_retention_days),
        now=now,
        batch_size=batch,
    )
    snapshot_cutoff = now - timedelta(days=settings.snapshot_retention_days)
    snapshots = purge_rows(
        session_factory,
        model=PerformanceSnapshot,
        where=PerformanceSnapshot.window_start < snapshot_cutoff,
        batch_size=batch,
    )
    rollup_cutoff = (now - timedelta(days=settings.rollup_retention_days)).date()
    rollups = purge_rows(
        session_factory, model=DailyEventRollup, where=DailyEventRollup.day < rollup_cutoff, batch_size=batch
    )
    # Claims are kept well past the backfill horizon: a forgotten claim of a
    # window inside it would have that window aggregated again.
    horizon = timedelta(seconds=settings.performance_window_seconds * settings.performance_backfill_windows)
    claims_cutoff = now - max(timedelta(days=2), 2 * horizon, 2 * timedelta(seconds=settings.cleanup_interval_seconds))
    claims = purge_rows(
        session_factory, model=ScheduledJobRun, where=ScheduledJobRun.window_start < claims_cutoff, batch_size=batch
    )
    rejected = purge_rejected(
        session_factory, cutoff=event_cutoff(now, settings.event_retention_days), batch_size=batch
    )
    compaction = compact_metric_files(metrics_dir) if metrics_dir is not None else None
    with session_factory() as session:
        finished = finish_window(session, job=job, window=window, now=now, owner=owner)
    if not finished:
        # Presumed dead past JOB_LEASE_SECONDS, another run took the window over: it marks it done.
        log.warning("cleanup window taken over by another run", extra={"job": job, "window": window.isoformat()})
    detail = {
        "events_rolled_up": events.deleted,
        "event_batches": len(events.batches),
        "snapshots_deleted": snapshots.deleted,
        "rollups_deleted": rollups.deleted,
        "claims_deleted": claims.deleted,
        "rejected_deleted": rejected.deleted,
        "compaction": compaction,
        "claim_lost": not finished,
    }
    return _reported(JobResult(job, done=(window,), detail=detail))
