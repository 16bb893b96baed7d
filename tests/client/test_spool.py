"""The spool keeps what it holds: across close, late events and siblings looking for orphans."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from panic_metrics_client.messages import Message
from panic_metrics_client.spool import Spool
from tests.client.conftest import ClientFactory
from tests.support.payloads import sample_payload
from tests.support.services import free_port


def events_on_disk(directory: Path) -> int:
    """Events in every spool file of `directory`, read from the files themselves."""
    total = 0
    for path in directory.glob("spool-*.sqlite3"):
        with sqlite3.connect(path) as db:
            total += int(db.execute("SELECT COALESCE(SUM(events), 0) FROM messages").fetchone()[0])
    return total


def test_an_event_after_close_joins_the_same_spool_and_nothing_is_dropped(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Broker refused, spool over half its cap, close(), one late event: 3,001 kept, none dropped, stats exact."""
    client = make_client(
        broker_url=f"redis://127.0.0.1:{free_port()}/0",
        spool_max_bytes=1_000_000,
        send_timeout_ms=200,
        retry_interval_ms=200,
    )
    for _ in range(3_000):
        client.record_fields("panic_request", sample_payload("panic_request"))
    assert client.flush(timeout=60)
    spool_dir = tmp_path / "spool"
    assert events_on_disk(spool_dir) == 3_000
    assert client._spool.bytes > 500_000  # over half the cap, as in the deploy that lost it

    client.close(timeout=5)
    client.record_fields("panic_request", sample_payload("panic_request"))  # a request finishing late

    stats = client.stats()
    assert stats["spooled"] == stats["spool_events"] == 3_001
    assert stats["dropped_spool_full"] == stats["dropped_spool_error"] == stats["dropped_queue_full"] == 0
    assert events_on_disk(spool_dir) == 3_001
    assert len(list(spool_dir.glob("spool-*.sqlite3"))) == 1  # the same file, not a second one adopting it


def test_a_closed_spool_is_not_adopted_while_its_process_lives(tmp_path: Path) -> None:
    """A closed, non-empty spool stays its process's: a sibling adopts it only once the lock is released."""
    closed = Spool(tmp_path, max_bytes=10**6)
    closed.append([Message("t", str(i), "{}", 1) for i in range(5)])
    closed.close()
    sibling = Spool(tmp_path, max_bytes=10**6)
    sibling.open()
    assert sibling.events == 0
    closed.append([Message("t", "late", "{}", 1)])  # reopens its own file, counts read from it
    assert closed.events == 6
    closed.close()

    assert closed._lock_file is not None
    os.close(closed._lock_file)  # the process exits: the kernel releases its lock
    sibling.adopt_orphans()
    assert [s.message.task_id for s in sibling.oldest(10)] == ["0", "1", "2", "3", "4", "late"]
    assert sibling.events == 6
    assert len(list(tmp_path.glob("spool-*.sqlite3"))) == 1
    sibling.close()


def test_an_empty_spool_is_removed_on_close_and_a_late_event_opens_a_new_one(tmp_path: Path) -> None:
    """Closing an empty spool deletes its files; a later event gets a fresh file, counted from zero."""
    spool = Spool(tmp_path, max_bytes=10**6)
    spool.open()
    spool.close()
    assert not list(tmp_path.glob("spool-*"))
    spool.append([Message("t", "late", "{}", 1)])
    assert spool.events == 1
    assert len(list(tmp_path.glob("spool-*.sqlite3"))) == 1
    spool.close()


class SpoolsOfSeveralProcesses(RuleBasedStateMachine):
    """Several processes' spools in one directory, driven in any order; each event kept once or counted dropped.

    A "process" is a Spool with its own flock (locks belong to open file
    descriptions, so one test process can hold several); it dies by losing its
    descriptors without cleaning up, as SIGKILL leaves it, and is replaced.
    """

    MAX_BYTES = 2_000
    PROCESSES = 3

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="spool-machine-"))
        self.spools = [self._new_spool() for _ in range(self.PROCESSES)]
        self.dead: list[Spool] = []
        self.written: dict[str, int] = {}  # task_id -> events
        self.delivered: list[str] = []
        self.next_id = 0

    def _new_spool(self) -> Spool:
        return Spool(self.directory, max_bytes=self.MAX_BYTES)

    @rule(
        process=st.integers(0, PROCESSES - 1),
        sizes=st.lists(st.tuples(st.integers(1, 5), st.integers(0, 400)), min_size=1, max_size=6),
    )
    def write(self, process: int, sizes: list[tuple[int, int]]) -> None:
        messages = []
        for events, pad in sizes:
            task_id = str(self.next_id)
            self.next_id += 1
            self.written[task_id] = events
            messages.append(Message("t", task_id, json.dumps({"pad": "x" * pad}), events))
        spool = self.spools[process]
        spool.append(messages)
        assert spool.bytes <= self.MAX_BYTES

    @rule(
        process=st.integers(0, PROCESSES - 1),
        limit=st.integers(1, 10),
        budget=st.none() | st.integers(1, 1_500),
        sent=st.booleans(),
    )
    def resend(self, process: int, limit: int, budget: int | None, sent: bool) -> None:
        spool = self.spools[process]
        waiting = spool.oldest(limit, max_bytes=budget)
        assert len(waiting) <= limit
        if budget is not None and len(waiting) > 1:
            assert sum(s.size for s in waiting) <= budget
        if sent:  # acknowledged by the broker; otherwise the publish failed and they stay
            spool.remove(waiting)
            self.delivered += [s.message.task_id for s in waiting]

    @rule(process=st.integers(0, PROCESSES - 1))
    def close(self, process: int) -> None:
        self.spools[process].close()

    @rule(process=st.integers(0, PROCESSES - 1))
    def reopen(self, process: int) -> None:
        self.spools[process].open()

    @rule(process=st.integers(0, PROCESSES - 1))
    def adopt(self, process: int) -> None:
        self.spools[process].adopt_orphans()

    @rule(process=st.integers(0, PROCESSES - 1))
    def die(self, process: int) -> None:
        spool = self.spools[process]
        if spool._db is not None:
            spool._db.close()
            spool._db = None
        if spool._lock_file is not None:
            os.close(spool._lock_file)
            spool._lock_file = None
        self.dead.append(spool)
        self.spools[process] = self._new_spool()

    @invariant()
    def every_event_is_kept_once_or_counted_dropped(self) -> None:
        on_disk: list[str] = []
        for path in self.directory.glob("spool-*.sqlite3"):
            with sqlite3.connect(path) as db:
                on_disk += [Message.decode(body).task_id for (body,) in db.execute("SELECT body FROM messages")]
        kept = self.delivered + on_disk
        assert len(kept) == len(set(kept)), "an event kept twice"
        assert set(kept) <= set(self.written)
        missing = set(self.written) - set(kept)
        dropped = sum(spool.dropped_events for spool in [*self.spools, *self.dead])
        assert sum(self.written[task_id] for task_id in missing) == dropped
        for spool in self.spools:
            if spool.path is not None and spool.path.exists():
                with sqlite3.connect(spool.path) as db:
                    events, size = db.execute(
                        "SELECT COALESCE(SUM(events), 0), COALESCE(SUM(bytes), 0) FROM messages"
                    ).fetchone()
                if spool._db is not None:
                    assert (spool.events, spool.bytes) == (events, size)
                assert size <= self.MAX_BYTES

    def teardown(self) -> None:
        for spool in self.spools:
            spool.close()
        shutil.rmtree(self.directory, ignore_errors=True)


SpoolsOfSeveralProcesses.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_spools_of_several_processes_keep_each_event_once = SpoolsOfSeveralProcesses.TestCase
