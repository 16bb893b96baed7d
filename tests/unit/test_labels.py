"""Label caps admit a dimension's first values up to its cap, record the rest as `other`, and agree across processes."""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, event, select, text
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import LabelValue, MetricEvent
from app.ingest import reset_label_caps, store_and_count
from app.metrics.labels import OTHER, LabelCaps
from panic_metrics_client.events import Event
from panic_metrics_client.parsing import parse_event
from tests.support.db import committing_factory, migrated_database
from tests.support.services import PostgresDatabase, wait_until

SMALL_CAPS = Settings(max_zones=3, max_small_dimension=2)
CAP_OF = {"zone": 3, "detector": 2}

Lookup = tuple[LabelCaps, str, str]
# One transaction: which process, its lookups as dimension and value, whether it commits.
Transaction = tuple[int, list[tuple[str, str]], bool]


@pytest.fixture(scope="module")
def empty_label_values_pg(pg_database: PostgresDatabase) -> Iterator[Engine]:
    """A PostgreSQL database of this module's own: the run's shared one holds label values other tests committed."""
    with migrated_database() as engine:
        yield engine


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_engine(request: pytest.FixtureRequest) -> Engine:
    """The caps on SQLite and on a PostgreSQL database with no label values yet."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_engine")  # type: ignore[no-any-return]
    return request.getfixturevalue("empty_label_values_pg")  # type: ignore[no-any-return]


class Rollback(Exception):
    """Raised inside a transaction to roll it back."""


def in_transaction(session: Session, lookups: Sequence[Lookup], *, commits: bool = True) -> list[str]:
    """Cap each (caps, dimension, value) in one transaction, as ingest does for one message."""
    answers: list[str] = []
    with contextlib.suppress(Rollback), committing_factory(session)() as transaction:
        answers.extend(caps.cap(transaction, dimension, value) for caps, dimension, value in lookups)
        if not commits:
            raise Rollback
    return answers


def one_by_one(session: Session, caps: LabelCaps, dimension: str, values: Sequence[str]) -> list[str]:
    """Cap each value in a transaction of its own."""
    return [in_transaction(session, [(caps, dimension, value)])[0] for value in values]


def stored_values(session: Session, dimension: str) -> set[str]:
    return set(session.scalars(select(LabelValue.value).where(LabelValue.dimension == dimension)))


def test_first_values_up_to_the_cap_are_kept_and_later_ones_are_other(db_session: Session) -> None:
    """With max_zones=3 the first three zones are labels of their own; every later zone is `other`."""
    caps = LabelCaps(SMALL_CAPS)
    answers = one_by_one(db_session, caps, "zone", ["downtown", "harbour", "airport", "suburbs", "docks"])
    assert answers == ["downtown", "harbour", "airport", OTHER, OTHER]
    assert one_by_one(db_session, caps, "zone", ["harbour", "suburbs"]) == ["harbour", OTHER]
    assert stored_values(db_session, "zone") == {"downtown", "harbour", "airport"}


def test_repeated_values_take_one_place_under_the_cap(db_session: Session) -> None:
    """A value seen again, in the same transaction or a later one, does not use another place."""
    caps = LabelCaps(SMALL_CAPS)
    values = ["a", "a", "b", "a", "b"]
    assert in_transaction(db_session, [(caps, "zone", value) for value in values]) == values
    assert one_by_one(db_session, caps, "zone", ["c", "a", "d"]) == ["c", "a", OTHER]


def test_each_dimension_has_its_own_cap(db_session: Session) -> None:
    """A full dimension does not make another dimension's values `other`."""
    caps = LabelCaps(SMALL_CAPS)
    one_by_one(db_session, caps, "zone", ["z1", "z2", "z3", "z4"])
    assert one_by_one(db_session, caps, "detector", ["velocity", "repeat", "night"]) == ["velocity", "repeat", OTHER]
    assert one_by_one(db_session, caps, "source", ["z4"]) == ["z4"]


def test_two_processes_sharing_a_database_admit_the_same_values(db_session: Session) -> None:
    """Two processes (two LabelCaps) see the same admitted set, whichever of them saw a value first."""
    first, second = LabelCaps(SMALL_CAPS), LabelCaps(SMALL_CAPS)
    assert one_by_one(db_session, first, "zone", ["a", "b"]) == ["a", "b"]
    assert one_by_one(db_session, second, "zone", ["c", "d", "a"]) == ["c", OTHER, "a"]
    assert one_by_one(db_session, first, "zone", ["c", "d", "e"]) == ["c", OTHER, OTHER]
    assert one_by_one(db_session, second, "zone", ["b", "e"]) == ["b", OTHER]


def test_decisions_of_a_rolled_back_transaction_are_forgotten(db_session: Session) -> None:
    """A value admitted (or refused) in a transaction that rolled back is not remembered by the process."""
    first, second = LabelCaps(SMALL_CAPS), LabelCaps(SMALL_CAPS)
    lookups = [(first, "zone", zone) for zone in ["a", "b", "c", "d"]]
    assert in_transaction(db_session, lookups, commits=False) == ["a", "b", "c", OTHER]
    assert stored_values(db_session, "zone") == set()
    # Another process now fills the cap with other zones; the first must agree with it.
    assert one_by_one(db_session, second, "zone", ["d", "e", "f"]) == ["d", "e", "f"]
    assert one_by_one(db_session, first, "zone", ["a", "d"]) == [OTHER, "d"]


# Steps: one transaction of a process, with a few lookups, that commits or rolls back.
steps = st.lists(
    st.tuples(
        st.integers(0, 1),
        st.lists(
            st.tuples(st.sampled_from(sorted(CAP_OF)), st.sampled_from(["a", "b", "c", "d", "e", "f"])),
            min_size=1,
            max_size=3,
        ),
        st.booleans(),
    ),
    max_size=20,
)


def reference_answers(transactions: Sequence[Transaction]) -> list[str]:
    """Plain Python: first values of a dimension up to its cap, counting only committed transactions."""
    committed: dict[str, list[str]] = {dimension: [] for dimension in CAP_OF}
    answers = []
    for _process, lookups, commits in transactions:
        pending = {dimension: list(values) for dimension, values in committed.items()}
        for dimension, value in lookups:
            admitted = pending[dimension]
            if value not in admitted and len(admitted) < CAP_OF[dimension]:
                admitted.append(value)
            answers.append(value if value in admitted else OTHER)
        if commits:
            committed = pending
    return answers


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(transactions=steps)
def test_caps_match_the_reference(db_session: Session, transactions: list[Transaction]) -> None:
    """Any sequence of lookups by two processes, committed or rolled back, gets the reference's answers."""
    db_session.execute(delete(LabelValue))
    db_session.commit()
    processes = (LabelCaps(SMALL_CAPS), LabelCaps(SMALL_CAPS))
    answers = []
    for process, lookups, commits in transactions:
        caps = processes[process]
        answers += in_transaction(db_session, [(caps, d, v) for d, v in lookups], commits=commits)
    assert answers == reference_answers(transactions)


def _zone_events(zones: Sequence[str]) -> list[Event]:
    return [parse_event("panic_request", {"service_type": "fire", "status": "requested", "zone": z}) for z in zones]


def _waiting_on_a_lock(engine: Engine, pid: int) -> bool:
    with engine.connect() as connection:
        query = text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid")
        return connection.execute(query, {"pid": pid}).scalar_one_or_none() == "Lock"


@pytest.mark.integration
def test_two_messages_admitting_the_same_new_values_in_opposite_orders_do_not_deadlock(
    empty_label_values_pg: Engine,
) -> None:
    """Two real PostgreSQL transactions store [A, B] and [B, A]: both commit, no deadlock.

    Deterministic: each transaction, after its first label admission, waits
    until the other has made its own first admission or is blocked on a row
    lock. In message order that is A and B held crosswise, then each waits
    for the other (PostgreSQL aborts one); in sorted order the second one
    blocks on A until the first commits.
    """
    engine = empty_label_values_pg
    zones = [f"dl-{uuid.uuid4().hex[:8]}-{side}" for side in ("a", "b")]
    reset_label_caps()
    first_admitted = {0: threading.Event(), 1: threading.Event()}
    pids: dict[int, int] = {}
    errors: list[BaseException] = []

    def run(side: int, message: list[Event]) -> None:
        other = 1 - side
        try:
            with Session(engine) as session, session.begin():
                pids[side] = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                admissions = 0

                def pause_after_first_admission(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
                    nonlocal admissions
                    if not statement.lstrip().startswith("INSERT INTO label_values"):
                        return
                    admissions += 1
                    if admissions == 1:
                        first_admitted[side].set()
                        wait_until(
                            lambda: (
                                first_admitted[other].is_set()
                                or (other in pids and _waiting_on_a_lock(engine, pids[other]))
                            ),
                            timeout=60,
                            what=f"transaction {other} to admit a value or wait for a lock",
                        )

                connection = session.connection()
                event.listen(connection, "after_cursor_execute", pause_after_first_admission)
                store_and_count(session, events=message, published_at=None)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(0, _zone_events(zones))),
        threading.Thread(target=run, args=(1, _zone_events(list(reversed(zones))))),
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        with Session(engine) as session:
            assert stored_values(session, "zone") >= set(zones)
    finally:
        reset_label_caps()
        with engine.begin() as connection:
            connection.execute(delete(LabelValue).where(LabelValue.value.in_(zones)))
            connection.execute(delete(MetricEvent).where(MetricEvent.zone.in_(zones)))
