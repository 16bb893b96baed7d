"""The spool on a full disk with the broker away: events wait in memory, bounded, and go out once both return.

The test mounts a small tmpfs of its own (root) for the spool directory, fills
it, and unmounts it at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from panic_metrics_client import Client
from tests.client.conftest import BreakableRedis, ClientFactory
from tests.client.test_app_process import queued_event_ids
from tests.support.disk import SmallTmpfs, small_tmpfs
from tests.support.payloads import sample_payload
from tests.support.services import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[SmallTmpfs]:
    """A 512 KiB tmpfs with a spool directory, filled to the last byte."""
    with small_tmpfs(tmp_path / "disk", size="512k") as disk:
        (disk.path / "spool").mkdir()
        disk.fill()
        yield disk


def in_an_outage_on_a_full_disk(
    make_client: ClientFactory, broker: BreakableRedis, disk: SmallTmpfs, *, queue_size: int
) -> Client:
    """A client whose broker is stopped (refused) and whose spool directory is on the full disk."""
    broker.stop()
    return make_client(
        broker_url=broker.url,
        spool_dir=disk.path / "spool",
        send_timeout_ms=300,
        retry_interval_ms=200,
        queue_size=queue_size,
    )


def test_a_full_spool_disk_keeps_events_in_memory_and_delivers_them_once_both_return(
    make_client: ClientFactory, breakable_redis: BreakableRedis, full_disk: SmallTmpfs
) -> None:
    """Disk full and broker refused: flush says False, nothing is dropped under the bound, all arrive later, once."""
    client = in_an_outage_on_a_full_disk(make_client, breakable_redis, full_disk, queue_size=500)
    ids = [str(client.record_fields("panic_request", sample_payload("panic_request"))) for _ in range(300)]
    assert not client.flush(timeout=3)  # still waiting in memory: not delivered, not on disk
    stats = client.stats()
    assert stats["queued"] == 300
    assert stats["dropped_spool_error"] == stats["spooled"] == stats["spool_events"] == 0

    full_disk.free()  # space returns first: the waiting events reach the spool
    wait_until(lambda: client.stats()["spool_events"] == 300, timeout=30, what="the events spooled once space returned")
    assert client.stats()["queued"] == 0
    breakable_redis.start()
    wait_until(lambda: client.stats()["spool_events"] == 0, timeout=60, what="the spool drained")
    assert client.flush(timeout=30)
    assert sorted(queued_event_ids(breakable_redis)) == sorted(ids)


def test_past_its_memory_bound_a_full_spool_disk_drops_the_oldest_and_flush_says_so(
    make_client: ClientFactory, breakable_redis: BreakableRedis, full_disk: SmallTmpfs
) -> None:
    """More waiting than the bound: the oldest are dropped and counted, flush is False, the rest arrive once."""
    client = in_an_outage_on_a_full_disk(make_client, breakable_redis, full_disk, queue_size=100)
    ids = []
    for _ in range(4):  # in rounds the sender takes one by one, so the memory queue itself never overflows
        ids += [str(client.record_fields("panic_request", sample_payload("panic_request"))) for _ in range(60)]
        client.flush(timeout=3)
    stats = client.stats()
    assert stats["queued"] <= 100
    assert stats["dropped_queue_full"] == 0
    assert stats["dropped_spool_error"] == 240 - stats["queued"]
    assert not client.flush(timeout=1)

    full_disk.free()
    breakable_redis.start()
    wait_until(lambda: client.stats()["queued"] == client.stats()["spool_events"] == 0, timeout=60, what="delivered")
    queued = queued_event_ids(breakable_redis)
    assert sorted(queued) == sorted(ids[len(ids) - len(queued) :])  # the newest were kept, the oldest dropped
    assert len(queued) == 240 - client.stats()["dropped_spool_error"]
