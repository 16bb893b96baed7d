"""The spool keeps what it holds: across close, late events and siblings looking for orphans."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

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
