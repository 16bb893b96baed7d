"""Label caps admit a dimension's first values up to its cap, record the rest as `other`, and agree across processes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, delete, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import LabelValue
from app.metrics.labels import OTHER, LabelCaps
from tests.support.db import committing_factory, migrate
from tests.support.services import PostgresDatabase

SMALL_CAPS = Settings(max_zones=3, max_small_dimension=2)
CAP_OF = {"zone": 3, "detector": 2}

Lookup = tuple[LabelCaps, str, str]
# One transaction: which process, its lookups as dimension and value, whether it commits.
Transaction = tuple[int, list[tuple[str, str]], bool]


@pytest.fixture(scope="module")
def empty_label_values_pg(pg_database: PostgresDatabase) -> Iterator[Engine]:
    """A PostgreSQL database of this module's own: the run's shared one holds label values other tests committed."""
    database = PostgresDatabase()
    database.create()
    engine = create_engine(database.url)
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()
        database.drop()


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
