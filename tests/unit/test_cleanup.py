"""The cleanup honours retention, its daily rollups equal the raw events they replaced, its batches are bounded."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, event, insert, select
from sqlalchemy.orm import Session

from app.aggregations.subscriptions import active_subscriptions_by_plan
from app.cleanup import MEASURES, event_cutoff, purge_events, rollup_key, rollups_of
from app.config import get_settings
from app.db.models import DailyEventRollup, MetricEvent, PerformanceSnapshot, ScheduledJobRun
from app.db.session import _create_engine
from app.jobs import cleanup_old_metrics
from app.windows import as_utc
from panic_metrics_client.events import EVENT_KINDS
from tests.support.db import committing_factory, rolled_back_session
from tests.support.metric_rows import events_of_every_kind, insert_rows, row

# Before any time other tests write to: the PostgreSQL database is shared by the run.
NOW = datetime(1995, 6, 15, 10, 30, tzinfo=UTC)
RETENTION_DAYS = 30
CUTOFF = event_cutoff(NOW, RETENTION_DAYS)


def expected_deleted(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything before the cutoff, but a subscription's latest event while it may still be active."""
    latest: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in rows if r["kind"] == "subscription"), key=lambda r: (r["occurred_at"], r["event_id"])):
        latest[r["subscription_id"]] = r

    def ended(r: dict[str, Any]) -> bool:
        return r["action"] in ("cancelled", "expired") or (r["expires_at"] is not None and r["expires_at"] <= NOW)

    return [
        r
        for r in rows
        if r["occurred_at"] < CUTOFF
        and (r["kind"] != "subscription" or latest[r["subscription_id"]] is not r or ended(r))
    ]


class Row:
    """A row dict read like a result row (attribute access, NULL for columns not given)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __getattr__(self, name: str) -> Any:
        return self._values.get(name)


def stored_rollups(session: Session) -> dict[tuple[Any, ...], dict[str, Any]]:
    found = session.execute(select(DailyEventRollup)).scalars()
    return {
        rollup_key(Row({**vars(r), "occurred_at": datetime.combine(r.day, datetime.min.time())})): {
            m: getattr(r, m) for m in MEASURES
        }
        for r in found
    }


def assert_same_measures(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        if isinstance(actual[name], int) and isinstance(value, int):
            assert actual[name] == value, name
        else:
            assert math.isclose(float(actual[name]), float(value), rel_tol=1e-9, abs_tol=1e-6), name


class DeleteStatements:
    """Counts the DELETEs of metric_events a connection runs."""

    def __init__(self, connection: Connection) -> None:
        self.count = 0
        event.listen(connection, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        if str(args[2]).lstrip().upper().startswith("DELETE FROM METRIC_EVENTS"):
            self.count += 1


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def isolated_session(
    request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path
) -> Callable[[], AbstractContextManager[Session]]:
    """A session per hypothesis example whose commits never reach the next one.

    PostgreSQL: a transaction rolled back at the end (commits are savepoints).
    SQLite: a fresh copy of the migrated file, since pysqlite's savepoints
    cannot nest a committed savepoint inside a rolled-back transaction.
    """
    if request.param == "postgresql":
        pg_engine = request.getfixturevalue("pg_engine")
        return lambda: rolled_back_session(pg_engine)

    @contextmanager
    def fresh_sqlite() -> Iterator[Session]:
        path = tmp_path / f"{uuid.uuid4().hex}.sqlite3"
        path.write_bytes(sqlite_template.read_bytes())
        engine = _create_engine(f"sqlite:///{path}")
        try:
            with Session(engine, expire_on_commit=False) as session:
                yield session
        finally:
            engine.dispose()
            path.unlink()

    return fresh_sqlite


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(events_of_every_kind(CUTOFF, NOW), max_size=60, unique_by=lambda r: r["event_id"]),
    batch_size=st.integers(2, 9),
)
def test_rollups_equal_the_raw_events_they_replaced(
    isolated_session: Callable[[], AbstractContextManager[Session]], rows: list[dict[str, Any]], batch_size: int
) -> None:
    """Raw events before the cutoff are gone; the rollups equal them exactly; subscriptions stay as they were."""
    with isolated_session() as session:
        insert_rows(session, rows)
        active_before = active_subscriptions_by_plan(session, now=NOW)
        report = purge_events(
            committing_factory(session), kinds=EVENT_KINDS, cutoff=CUTOFF, now=NOW, batch_size=batch_size
        )
        deleted = expected_deleted(rows)
        written = {r["event_id"] for r in rows}
        remaining = {e for (e,) in session.execute(select(MetricEvent.event_id)) if e in written}
        assert remaining == written - {r["event_id"] for r in deleted}
        assert report.deleted == len(deleted)
        assert max(report.batches) <= batch_size
        expected = rollups_of(Row(r) for r in deleted)
        actual = stored_rollups(session)
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_same_measures(actual[key], expected[key])
        assert active_subscriptions_by_plan(session, now=NOW) == active_before


def test_batches_are_bounded_in_rows_and_statements(db_session: Session) -> None:
    """23 old panic requests in batches of 5: five DELETEs of at most 5 rows, then one that finds none."""
    insert_rows(
        db_session,
        [row("panic_request", CUTOFF - timedelta(hours=i + 1), status="requested", zone="z") for i in range(23)],
    )
    insert_rows(db_session, [row("panic_request", CUTOFF, status="requested", zone="z")])  # kept: on the cutoff
    deletes = DeleteStatements(db_session.connection())
    report = purge_events(committing_factory(db_session), kinds=["panic_request"], cutoff=CUTOFF, now=NOW, batch_size=5)
    assert report.batches == [5, 5, 5, 5, 3, 0]
    assert deletes.count == 6
    (rollup,) = db_session.execute(select(DailyEventRollup)).scalars()
    assert (rollup.events, rollup.zone, rollup.firm_id, rollup.http_status) == (23, "z", "", 0)


def test_http_summaries_roll_up_as_the_requests_they_stand_for(db_session: Session) -> None:
    """Two summaries of 7 and 5 requests of one route and day: one rollup of 12 requests and their durations."""
    summary = {"method": "GET", "endpoint": "/api/v1/zones", "http_status": 200}
    insert_rows(
        db_session,
        [
            row("http_summary", CUTOFF - timedelta(hours=2), request_count=7, duration_seconds=0.7, **summary),
            row("http_summary", CUTOFF - timedelta(hours=1), request_count=5, duration_seconds=2.5, **summary),
        ],
    )
    purge_events(committing_factory(db_session), kinds=["http_summary"], cutoff=CUTOFF, now=NOW, batch_size=10)
    (rollup,) = db_session.execute(select(DailyEventRollup)).scalars()
    assert (rollup.kind, rollup.endpoint, rollup.events, rollup.duration_sum) == (
        "http_summary",
        "/api/v1/zones",
        12,
        3.2,
    )


def test_cleanup_job_honours_every_retention_and_runs_once_a_day(db_session: Session, tmp_path: Path) -> None:
    """Snapshots, rollups and claims past their retention go; recent ones stay; a second run that day skips."""
    job_settings = get_settings().model_copy(
        update={"event_retention_days": RETENTION_DAYS, "snapshot_retention_days": 10, "rollup_retention_days": 100}
    )
    zone = f"keep-{uuid.uuid4().hex[:6]}"
    snapshot = {"subject_type": "zone", "subject": zone, "requests": 1, "completed": 1, "cancelled": 0, "pranks": 0}
    # Core inserts: the ORM's insertmanyvalues cannot match SQLite's naive timestamps to aware ones.
    db_session.execute(
        insert(PerformanceSnapshot),
        [
            {**snapshot, "window_start": NOW - timedelta(days=age), "window_end": NOW - timedelta(days=age)}
            for age in (11, 9)
        ],
    )
    db_session.execute(
        insert(ScheduledJobRun),
        [
            {"job": "old", "window_start": NOW - timedelta(days=30), "started_at": NOW, "owner": "test"},
            {"job": "recent", "window_start": NOW - timedelta(hours=1), "started_at": NOW, "owner": "test"},
        ],
    )
    rollup = dict.fromkeys(("service_type", "status", "zone", "firm_id", "detector", "user_type", "channel"), "")
    rollup |= dict.fromkeys(
        ("notification_type", "plan", "action", "currency", "credit_type", "method", "endpoint", "source"), ""
    )
    measures = dict.fromkeys(MEASURES, 0)
    db_session.execute(
        insert(DailyEventRollup),
        [
            {"day": (NOW - timedelta(days=age)).date(), "kind": kind, "http_status": 0, **rollup, **measures}
            for age, kind in ((101, "old"), (99, "kept"))
        ],
    )
    factory = committing_factory(db_session)
    first = cleanup_old_metrics(now=NOW, settings=job_settings, session_factory=factory, metrics_dir=tmp_path)
    second = cleanup_old_metrics(now=NOW + timedelta(hours=1), settings=job_settings, session_factory=factory)
    assert (len(first.done), len(second.skipped)) == (1, 1)
    assert first.detail["compaction"] == {
        "merged_processes": 0,
        "removed_files": 0,
        "bytes_before": 0,
        "bytes_after": 0,
        "unproven_processes": 0,
        "unresolved_processes": 0,
    }
    windows = db_session.execute(select(PerformanceSnapshot.window_start).where(PerformanceSnapshot.subject == zone))
    assert [as_utc(w) for (w,) in windows] == [NOW - timedelta(days=9)]
    assert set(db_session.execute(select(DailyEventRollup.kind)).scalars()) >= {"kept"}
    assert "old" not in set(db_session.execute(select(DailyEventRollup.kind)).scalars())
    claims = set(db_session.execute(select(ScheduledJobRun.job)).scalars())
    assert "recent" in claims
    assert "old" not in claims


def test_cutoff_is_a_utc_midnight() -> None:
    """Every day before the cutoff is past retention as a whole, so its rollup is complete."""
    assert datetime(1995, 5, 16, tzinfo=UTC) == CUTOFF
