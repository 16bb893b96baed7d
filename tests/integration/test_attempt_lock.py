"""The attempt's advisory lock on real PostgreSQL, taken by the event insert's own statement.

`attempt_committed` takes the same lock to wait for an attempt's COMMIT still
in flight, so the attempt must hold it before its first row is inserted and
until it ends, however many of its rows are new, and even when none is.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.ingest import Attempt, store_and_count
from app.store import _lock_key, attempt_committed, insert_new, lock_attempt
from panic_metrics_client.events import PanicRequestEvent
from panic_metrics_client.parsing import InvalidEvent
from tests.support.services import wait_until

pytestmark = pytest.mark.integration


def _event(event_id: uuid.UUID | None = None) -> PanicRequestEvent:
    return PanicRequestEvent(
        event_id=event_id or uuid.uuid4(), service_type="fire", status="requested", zone="attempt-lock"
    )


def _lock_is_free(engine: Engine, token: uuid.UUID) -> bool:
    """Whether another session could take the attempt's lock right now (it does, and lets go at once)."""
    with engine.connect() as probe, probe.begin():
        return bool(probe.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _lock_key(token)}).scalar())


@contextmanager
def _waiting_on_the_lock(engine: Engine, work: Callable[[Session], object]) -> Iterator[list[object]]:
    """Run `work` in a transaction of its own on a thread; yield once it waits on an advisory lock.

    The list yielded holds `work`'s result (or error) after the block, once the thread is done.
    """
    outcome: list[object] = []
    pid: list[int] = []

    def run() -> None:
        try:
            with Session(engine) as session, session.begin():
                pid.append(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                outcome.append(work(session))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        with engine.connect() as watcher:
            wait_until(
                lambda: (
                    (
                        bool(pid)
                        and watcher.execute(
                            text("SELECT wait_event FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid[0]}
                        ).scalar()
                        == "advisory"
                    )
                    or bool(outcome)
                ),
                timeout=30,
                what="the transaction waits on the advisory lock",
            )
        assert outcome == [], f"it did not wait for the lock: {outcome}"
        yield outcome
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive()


@pytest.mark.parametrize(("stored_before", "count"), [("none", 0), ("none", 1), ("none", 3), ("all", 1), ("all", 3)])
def test_the_insert_takes_the_attempts_lock_before_its_first_row(
    pg_engine: Engine, stored_before: str, count: int
) -> None:
    """With the attempt's lock held elsewhere, insert_new waits before inserting anything, new rows or not."""
    events = [_event() for _ in range(count)]
    if stored_before == "all":
        with Session(pg_engine) as session, session.begin():
            insert_new(session, events, published_at=None)
    token = uuid.uuid4()
    with Session(pg_engine) as holder, holder.begin():
        lock_attempt(holder, token)
        with _waiting_on_the_lock(
            pg_engine, lambda session: insert_new(session, events, published_at=None, stored_by=token)
        ) as outcome:
            # Waiting, it holds no row yet: another transaction inserts its ids without waiting on them.
            for event in events if stored_before == "none" else []:
                with Session(pg_engine) as probe, probe.begin():
                    probe.execute(text("SET LOCAL lock_timeout = '5s'"))
                    try:
                        assert insert_new(probe, [event], published_at=None) == {event.event_id}
                    except OperationalError as exc:
                        pytest.fail(f"the insert waiting on the lock holds a row already: {exc.orig}")
                    probe.rollback()
            holder.rollback()
    expected = {e.event_id for e in events} if stored_before == "none" else set()
    assert outcome == [expected]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_the_insert_holds_the_attempts_lock_until_the_transaction_ends(pg_engine: Engine, count: int) -> None:
    """After insert_new returns, the attempt's lock is held until COMMIT, then free."""
    token = uuid.uuid4()
    with Session(pg_engine) as session, session.begin():
        insert_new(session, [_event() for _ in range(count)], published_at=None, stored_by=token)
        assert not _lock_is_free(pg_engine, token)
    assert _lock_is_free(pg_engine, token)


def test_a_message_of_rejections_only_takes_the_attempts_lock(pg_engine: Engine) -> None:
    """No event to insert: store_and_count still holds the lock around the rejection rows it keeps."""
    attempt = Attempt()
    rejection = (0, InvalidEvent("panic_request", "invalid", "status: not a status", None), {"status": "?"})
    with Session(pg_engine) as session, session.begin():
        result = store_and_count(session, events=[], rejections=[rejection], published_at=None, attempt=attempt)
        assert result.rejected == 1
        assert not _lock_is_free(pg_engine, attempt.token)
        session.rollback()


@pytest.mark.parametrize("ending", ["commit", "rollback"])
def test_attempt_committed_waits_for_an_attempt_in_flight(pg_engine: Engine, ending: str) -> None:
    """attempt_committed blocks while the attempt's transaction is open, then answers what it did."""
    attempt = Attempt()
    with Session(pg_engine) as session:
        session.begin()
        store_and_count(session, events=[_event()], published_at=None, attempt=attempt)
        with _waiting_on_the_lock(pg_engine, lambda resolver: attempt_committed(resolver, attempt.token)) as answer:
            if ending == "commit":
                session.commit()
            else:
                session.rollback()
    assert answer == [ending == "commit"]
