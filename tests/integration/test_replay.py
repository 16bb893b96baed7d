"""Replays go through the broker and the workers: stored once, counted exactly, repeatable, safe beside writers."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.db.models import MetricEvent, RejectedEvent
from app.dead_letters import REPLAYING, _locked_append, replay_dead_letters, write_dead_letters
from app.rejected import Selection, replay_rejected
from app.replay import broker_publisher
from tests.integration.conftest import WorkerFactory
from tests.support.services import wait_until
from tests.support.worker import value
from workers.tasks import events as tasks

pytestmark = pytest.mark.integration


def panic(zone: str, n: int) -> dict[str, Any]:
    return {
        "event_id": f"{zone[1:9]}-0000-4000-8000-{n:012d}",
        "service_type": "medical",
        "status": "requested",
        "zone": zone,
    }


def stored_in_zone(engine: Engine, zone: str) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).where(MetricEvent.zone == zone)).scalar_one())


def test_dead_letter_replay_beside_an_appending_writer_loses_nothing_and_counts_exactly(
    start_worker: WorkerFactory, pg_engine: Engine, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer mid-append when the replay starts, and one after it: every record replayed once, counted once."""
    directory = tmp_path / "dead_letter"
    monkeypatch.setenv("DEAD_LETTER_DIR", str(directory))
    from app.config import get_settings

    get_settings.cache_clear()
    try:
        write_dead_letters([panic(unique, i) for i in range(10)], kind="panic_request", published_at=None)
        [path] = directory.glob("dead-letters-*.jsonl")
        replayed: list[int] = []
        with _locked_append(path) as handle:  # a writer in the middle of its append
            handle.write('{"kind": "panic_request", "payload": ')
            handle.flush()
            with broker_publisher() as publish:
                replayer = threading.Thread(target=lambda: replayed.append(replay_dead_letters(directory, publish)))
                replayer.start()
                # The replayer renamed the file away and now waits for the writer's lock.
                wait_until(lambda: not path.exists(), timeout=30, what="the replayer to take the file")
                handle.write(json.dumps(panic(unique, 10)) + "}\n")  # the rest of the writer's record
                handle.flush()
        replayer.join(timeout=60)
        assert replayed == [11]
        # A late writer finds the name gone and starts a fresh file, for the next replay.
        write_dead_letters([panic(unique, i) for i in range(11, 15)], kind="panic_request", published_at=None)
        assert [p.name for p in directory.iterdir()] == [path.name]
        with broker_publisher() as publish:
            assert replay_dead_letters(directory, publish) == 4
            # Repeatable: a replay that died after publishing leaves its file; publishing it again counts nothing twice.
            write_dead_letters([panic(unique, i) for i in range(5)], kind="panic_request", published_at=None)
            leftover = next(directory.glob("dead-letters-*.jsonl"))
            leftover.rename(leftover.with_name(leftover.name + REPLAYING + "crashed"))
            assert replay_dead_letters(directory, publish) == 5
        assert list(directory.iterdir()) == []
    finally:
        get_settings.cache_clear()

    worker = start_worker()
    wait_until(lambda: stored_in_zone(pg_engine, unique) == 15, timeout=60, what="every dead letter stored")
    wait_until(
        lambda: value(worker.scrape(), "metrics_events_duplicate_total", kind="panic_request") == 5,
        timeout=60,
        what="the repeated replay seen as duplicates",
    )
    samples = worker.scrape()
    assert value(samples, "panic_requests_total", service_type="medical", status="requested", zone=unique) == 15
    assert value(samples, "metrics_events_stored_total", kind="panic_request") == 15


def test_rejected_payloads_are_kept_listed_and_replayed_after_a_fix(
    start_worker: WorkerFactory, pg_engine: Engine, unique: str, tmp_path: Path
) -> None:
    """Events rejected for a too-strict setting are kept; after the fix, a replay stores and counts them once."""
    future = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    events = [{**panic(unique, i), "occurred_at": future} for i in range(6)]
    strict = start_worker()
    tasks.record_panic_request_metrics.delay(**events[0])
    tasks.record_events.delay([{**e, "kind": "panic_request"} for e in events[1:]])
    # Redelivered: the same message's rejections are kept and counted once.
    message = tasks.record_events.delay([{**events[1], "kind": "panic_request"}])
    tasks.record_events.apply_async(args=([{**events[1], "kind": "panic_request"}],), task_id=message.id)

    def kept() -> int:
        with Session(pg_engine) as session:
            return int(session.scalar(select(func.count()).where(RejectedEvent.payload.contains(unique))) or 0)

    wait_until(lambda: kept() == 7, timeout=60, what="every rejection kept")
    wait_until(
        lambda: (
            value(strict.scrape(), "metrics_events_rejected_total", kind="panic_request", reason="future_timestamp")
            == 7
        ),
        timeout=60,
        what="every rejection counted once",
    )
    strict.stop()

    fixed = start_worker(MAX_CLOCK_SKEW_SECONDS="3600")
    with broker_publisher() as publish:
        selection = Selection(reason="future_timestamp")
        with Session(pg_engine) as session:
            ours = [
                (m, p)
                for m, p, payload in session.execute(
                    select(RejectedEvent.message_id, RejectedEvent.position, RejectedEvent.payload).where(
                        RejectedEvent.reason == "future_timestamp"
                    )
                )
                if unique in payload
            ]
        selection = Selection(ids=ours)

        def factory() -> Any:
            from app.db.session import session_scope

            return session_scope(pg_engine)

        assert replay_rejected(factory, publish, selection) == 7
        assert replay_rejected(factory, publish, selection) == 0
    wait_until(lambda: stored_in_zone(pg_engine, unique) == 6, timeout=60, what="replayed events stored")
    wait_until(
        lambda: value(fixed.scrape(), "metrics_events_stored_total", kind="panic_request") == 6,
        timeout=60,
        what="replayed events counted",
    )
    assert kept() == 0
    assert value(fixed.scrape(), "panic_requests_total", service_type="medical", status="requested", zone=unique) == 6
