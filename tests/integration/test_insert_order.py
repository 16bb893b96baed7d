"""insert_new on real PostgreSQL: a batch takes its event_ids' index entries in sorted order.

Two workers inserting overlapping ids in opposite orders would each hold one
entry the other waits for, and PostgreSQL would abort one as a deadlock. In
sorted order, a batch blocked on an id holds none of the ids after it.
"""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.store import insert_new
from panic_metrics_client.events import PanicRequestEvent
from tests.support.services import wait_until

pytestmark = pytest.mark.integration


def _event(event_id: uuid.UUID) -> PanicRequestEvent:
    return PanicRequestEvent(event_id=event_id, service_type="fire", status="requested", zone="insert-order")


def test_a_batch_blocked_on_its_lowest_id_holds_none_of_the_higher_ones(pg_engine: Engine) -> None:
    """A batch [high, low] waiting on `low` (held by another transaction) leaves `high` free to insert.

    Deterministic: the holder keeps `low` uncommitted; the batch is run until
    PostgreSQL reports it waiting on a lock; then a probe inserts `high` with a
    lock timeout. In message order the batch would hold `high` already and the
    probe would time out.
    """
    low, high = sorted([uuid.uuid4(), uuid.uuid4()])
    errors: list[BaseException] = []
    batch_pid: list[int] = []
    with Session(pg_engine) as holder, holder.begin():
        insert_new(holder, [_event(low)], published_at=None)

        def run_batch() -> None:
            try:
                with Session(pg_engine) as session, session.begin():
                    batch_pid.append(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
                    insert_new(session, [_event(high), _event(low)], published_at=datetime.now(UTC))
                    session.rollback()
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
                errors.append(exc)

        batch = threading.Thread(target=run_batch)
        batch.start()
        try:
            with pg_engine.connect() as watcher:
                wait_until(
                    lambda: (
                        bool(batch_pid)
                        and watcher.execute(
                            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": batch_pid[0]}
                        ).scalar()
                        == "Lock"
                    ),
                    timeout=30,
                    what="the batch waits on the id the holder keeps",
                )
            with Session(pg_engine) as probe, probe.begin():
                probe.execute(text("SET LOCAL lock_timeout = '5s'"))
                try:
                    stored = insert_new(probe, [_event(high)], published_at=None)
                except OperationalError as exc:
                    pytest.fail(f"the blocked batch holds the higher id: {exc.orig}")
                probe.rollback()
            assert stored == {high}
        finally:
            holder.rollback()
            batch.join(timeout=60)
    assert not batch.is_alive()
    assert errors == []
