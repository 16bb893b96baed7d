"""Label caps stay exact when transactions of several processes admit values at once (PostgreSQL).

Each transaction runs in a thread of its own on its own connection, one step
at a time as the test schedules it; a step that waits on a lock stays
waiting while the others go on. Hypothesis picks the interleaving, so the
admission rule is checked under orders a test with sleeps would rarely hit.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, select, text
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import LabelValue
from app.metrics.labels import OTHER, LabelCaps
from tests.support.db import migrated_database
from tests.support.services import PostgresDatabase

pytestmark = pytest.mark.integration

SMALL_CAPS = Settings(max_zones=3, max_small_dimension=2)
CAP_OF = {"zone": 3, "detector": 2}
VALUES = ["a", "b", "c", "d", "e", "f"]
PROCESSES = 3
END = ("", "")  # the step that ends a transaction


@pytest.fixture(scope="module")
def label_engine(pg_database: PostgresDatabase) -> Iterator[Engine]:
    """A PostgreSQL database of this module's own, so no other test's label values count against the caps."""
    with migrated_database(pool_size=8) as engine:
        yield engine


@dataclass
class Writer:
    """One transaction of one process, on a connection and a thread of its own, run step by step."""

    engine: Engine
    caps: LabelCaps
    lookups: list[tuple[str, str]]
    commits: bool
    answers: list[str] = field(default_factory=list)
    steps_left: int = 0
    busy: bool = False
    pid: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self.steps_left = len(self.lookups) + 1
        self._commands: queue.Queue[tuple[str, str]] = queue.Queue()
        self._ready = threading.Event()
        self._idle = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30), "writer did not connect"

    def step(self) -> None:
        """Start the next step: the next lookup, or COMMIT (or ROLLBACK) after the last."""
        self.busy = True
        self._idle.clear()
        taken = len(self.lookups) + 1 - self.steps_left
        self.steps_left -= 1
        self._commands.put(self.lookups[taken] if self.steps_left else END)

    def abandon(self) -> None:
        """Roll back and end, whatever steps are left (a failed example must not leave a lock held)."""
        if self.steps_left:
            self.commits = False
            self.steps_left = 0
            self._commands.put(END)
        self._thread.join(30)

    def finished_step(self) -> bool:
        if self.busy and self._idle.is_set():
            self.busy = False
        return not self.busy

    def _run(self) -> None:
        try:
            with Session(self.engine) as session:
                self.pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
                self._ready.set()
                while (command := self._commands.get()) != END:
                    self.answers.append(self.caps.cap(session, *command))
                    self._idle.set()
                if self.commits:
                    session.commit()
                else:
                    session.rollback()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self._ready.set()
            self._idle.set()


def settle(engine: Engine, writers: Sequence[Writer]) -> None:
    """Wait until every writer's step has finished or waits on a lock another writer holds."""
    deadline = time.monotonic() + 30
    with engine.connect() as connection:
        while True:
            running = [w for w in writers if not w.finished_step()]
            if not running:
                return
            waiting = set(
                connection.execute(text("SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'")).scalars()
            )
            connection.rollback()  # a fresh snapshot of the activity next time
            if all(w.pid in waiting for w in running):
                return
            assert time.monotonic() < deadline, "a writer neither finished nor waited on a lock"
            time.sleep(0.002)


def reference(
    known: Sequence[tuple[str, str]], ended: Sequence[Writer]
) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Plain Python: the transactions one after another in the order they ended; first values up to the cap."""
    committed: dict[str, list[str]] = {dimension: [] for dimension in CAP_OF}
    for dimension, value in known:
        if value not in committed[dimension] and len(committed[dimension]) < CAP_OF[dimension]:
            committed[dimension].append(value)
    answers = []
    for writer in ended:
        pending = {dimension: list(values) for dimension, values in committed.items()}
        mine = []
        for dimension, value in writer.lookups:
            admitted = pending[dimension]
            if value not in admitted and len(admitted) < CAP_OF[dimension]:
                admitted.append(value)
            mine.append(value if value in admitted else OTHER)
        answers.append(mine)
        if writer.commits:
            committed = pending
    return committed, answers


def run(engine: Engine, writers: Sequence[Writer], data: st.DataObject) -> list[Writer]:
    """Run the writers' steps in an order hypothesis draws; the writers in the order their transactions ended."""
    ended: list[Writer] = []
    # Drawn at once, so the draws do not depend on which writers a lock holds up.
    steps = sum(w.steps_left for w in writers)
    choices = iter(data.draw(st.lists(st.integers(0, 11), min_size=steps, max_size=steps), label="schedule"))
    deadline = time.monotonic() + 60
    while not all(w.steps_left == 0 and w.finished_step() for w in writers):
        runnable = [w for w in writers if w.finished_step() and w.steps_left]
        if not runnable:
            # Every writer with steps left is still busy: one just granted its lock (a commit
            # released it) and runs on, though the activity snapshot still showed it waiting.
            assert time.monotonic() < deadline, "a writer was left waiting"
            time.sleep(0.002)
            continue
        writer = runnable[next(choices) % len(runnable)]
        writer.step()
        if not writer.steps_left:
            ended.append(writer)
        settle(engine, writers)
        assert [w.error for w in writers if w.error] == []

    return ended


lookup = st.tuples(st.sampled_from(sorted(CAP_OF)), st.sampled_from(VALUES))
transactions = st.lists(
    st.tuples(st.integers(0, PROCESSES - 1), st.lists(lookup, min_size=1, max_size=4), st.booleans()),
    min_size=2,
    max_size=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(known=st.lists(lookup, max_size=3), planned=transactions, data=st.data())
def test_concurrent_admissions_match_the_reference_in_commit_order(
    label_engine: Engine,
    known: list[tuple[str, str]],
    planned: list[tuple[int, list[tuple[str, str]], bool]],
    data: st.DataObject,
) -> None:
    """Any interleaving of concurrent transactions, some repeating known values, some rolled back:
    each answer is the reference's with the transactions run one by one in commit order, so
    exactly min(cap, distinct) values are admitted, the first-comers, and no admitted value is `other`.
    """
    with Session(label_engine) as session, session.begin():
        session.execute(delete(LabelValue))
    processes = [LabelCaps(SMALL_CAPS) for _ in range(PROCESSES)]
    # Process 0 has admitted the known values itself (a dictionary lookup from
    # now on); the others find them in the database.
    with Session(label_engine) as session:
        for dimension, value in known:
            processes[0].cap(session, dimension, value)
        session.commit()

    # cap_all's order: every transaction looks its values up sorted.
    writers = [
        Writer(label_engine, processes[process], sorted(set(lookups)), commits) for process, lookups, commits in planned
    ]
    try:
        ended = run(label_engine, writers, data)
    finally:
        for writer in writers:
            writer.abandon()
    assert [w.error for w in writers if w.error] == []

    committed, answers = reference(known, ended)
    assert [w.answers for w in ended] == answers
    with Session(label_engine) as session:
        stored = session.execute(select(LabelValue.dimension, LabelValue.value)).all()
        assert sorted(stored) == sorted((d, v) for d, values in committed.items() for v in values)
        # Every process, asked again, agrees with the database: an admitted value
        # is itself, a value of a full dimension is `other`, any other would be
        # admitted now (each asked in a transaction rolled back).
        for caps in processes:
            for dimension, values in committed.items():
                for value in VALUES:
                    full = len(values) >= CAP_OF[dimension]
                    expected = OTHER if full and value not in values else value
                    assert caps.cap(session, dimension, value) == expected
                    session.rollback()
