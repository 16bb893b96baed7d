"""Exact counts after faults on real processes: counter increase = rows inserted, for every kind.

Faults are injected deterministically by the worker's test seams
(app.ingest: SIGKILL right after a COMMIT, or a raising counting callback,
for events whose id starts with a prefix the test chooses), never by timing.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from app.db.models import MetricEvent
from app.ingest import KILL_AFTER_COMMIT_ENV, RAISE_IN_COUNT_ENV
from app.metrics.multiproc import collect_registry, compact
from app.store import attempt_committed
from tests.integration.conftest import WorkerFactory
from tests.support.payloads import KINDS, sample_payload
from tests.support.services import wait_until
from tests.support.worker import value
from workers.tasks import events as tasks

pytestmark = pytest.mark.integration


def marked_events(prefix: str, count: int) -> list[dict[str, Any]]:
    """`count` valid events cycling through every kind, each id starting with `prefix` (8 hex digits)."""
    return [
        sample_payload(KINDS[i % len(KINDS)], kind=KINDS[i % len(KINDS)], event_id=f"{prefix}-0000-4000-8000-{i:012d}")
        for i in range(count)
    ]


def rows_by_kind(engine: Engine, events: list[dict[str, Any]]) -> Counter[str]:
    """Rows stored of these events, per kind."""
    ids = [e["event_id"] for e in events]
    with engine.connect() as connection:
        rows = connection.execute(
            select(MetricEvent.kind, func.count()).where(MetricEvent.event_id.in_(ids)).group_by(MetricEvent.kind)
        ).all()
    return Counter({kind: int(n) for kind, n in rows})


def stored_by_kind(samples: dict[Any, float]) -> Counter[str]:
    """metrics_events_stored_total per kind, as scraped."""
    return Counter({kind: int(value(samples, "metrics_events_stored_total", kind=kind)) for kind in KINDS}) + Counter()


def test_children_sigkilled_right_after_commit_leave_exact_counts(
    start_worker: WorkerFactory, pg_engine: Engine, unique: str
) -> None:
    """50 events, each one's child SIGKILLed the instant after its COMMIT: every kind counted exactly once."""
    prefix = unique[1:9]
    events = marked_events(prefix, 50)
    worker = start_worker(**{KILL_AFTER_COMMIT_ENV: prefix, "MULTIPROC_COMPACT_INTERVAL_SECONDS": "1"})
    for event in events:
        tasks.record_events.delay([event])
    expected = Counter(e["kind"] for e in events)

    wait_until(lambda: rows_by_kind(pg_engine, events) == expected, timeout=240, what="every event stored")
    # The housekeeper settles each dead child's pending record before merging its files.
    wait_until(lambda: stored_by_kind(worker.scrape()) == expected, timeout=60, what="exact counts")
    # Each kill was real: the redelivery found the row stored and counted it as a duplicate, not as an event.
    wait_until(
        lambda: sum(value(worker.scrape(), "metrics_events_duplicate_total", kind=k) for k in KINDS) == len(events),
        timeout=120,
        what="every redelivery counted as a duplicate",
    )
    samples = worker.scrape()
    assert stored_by_kind(samples) == rows_by_kind(pg_engine, events) == expected
    assert value(samples, "panic_requests_total", service_type="security", status="accepted", zone="downtown") == sum(
        1 for e in events if e["kind"] == "panic_request"
    )


def test_a_raising_counting_callback_loses_no_counts(
    start_worker: WorkerFactory, pg_engine: Engine, unique: str, tmp_path: Path
) -> None:
    """The counting callback raises after COMMIT: the message is acknowledged and its counts still land exactly."""
    prefix = unique[1:9]
    events = marked_events(prefix, 16)
    worker = start_worker(
        **{RAISE_IN_COUNT_ENV: prefix, "WORKER_MAX_TASKS_PER_CHILD": "3", "MULTIPROC_COMPACT_INTERVAL_SECONDS": "1"}
    )
    for event in events:
        tasks.record_events.delay([event])
    expected = Counter(e["kind"] for e in events)
    wait_until(lambda: rows_by_kind(pg_engine, events) == expected, timeout=120, what="every event stored")
    directory = worker.multiproc_dir
    # A warm shutdown: children finish and exit, leaving their last records to whoever merges their files.
    worker.stop()

    def resolve(token: Any, _rows: int) -> bool:
        with pg_engine.connect() as connection:
            from sqlalchemy.orm import Session

            with Session(bind=connection) as session:
                return attempt_committed(session, token)

    report = compact(directory, resolve=resolve)
    assert report.unresolved_pids == ()
    registry = collect_registry(directory)
    counted = (
        Counter(
            {kind: int(registry.get_sample_value("metrics_events_stored_total", {"kind": kind}) or 0) for kind in KINDS}
        )
        + Counter()
    )
    assert counted == rows_by_kind(pg_engine, events) == expected
    assert not list(Path(directory).glob("pending-*"))
    # Nothing was retried: each message was acknowledged once, despite the failing callback.
    assert sum(registry.get_sample_value("metrics_events_duplicate_total", {"kind": k}) or 0 for k in KINDS) == 0


def test_direct_calls_each_store_and_count_their_own_event(pg_engine: Engine, unique: str) -> None:
    """A task called in-process, twice with the same fields: two events, not one and a duplicate."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    labels = {"service_type": "fire", "status": "requested", "zone": unique}
    before = collect_registry(directory).get_sample_value("panic_requests_total", labels) or 0.0

    first = tasks.record_panic_request_metrics(**labels)
    second = tasks.record_panic_request_metrics(**labels)

    assert first == second == {"stored": 1, "duplicates": 0, "rejected": 0}
    with pg_engine.connect() as connection:
        rows = connection.execute(select(func.count()).where(MetricEvent.zone == unique)).scalar_one()
    assert rows == 2
    assert (collect_registry(directory).get_sample_value("panic_requests_total", labels) or 0.0) - before == 2


def test_series_with_fixed_labels_are_exposed_at_zero_before_any_event(start_worker: WorkerFactory) -> None:
    """A fresh worker's first scrape already holds every closed-set series at 0."""
    samples = start_worker().scrape()
    for kind in KINDS:
        for name in ("metrics_events_stored_total", "metrics_events_duplicate_total"):
            assert samples[(name, frozenset({("kind", kind)}))] == 0.0, (name, kind)
    for credit_type in ("purchase", "spend", "refund", "adjustment"):
        assert samples[("credits_total", frozenset({("type", credit_type)}))] == 0.0
    assert samples[("cache_requests_total", frozenset({("result", "hit")}))] == 0.0
