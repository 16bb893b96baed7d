"""A label cap is exact across hosts: three workers (each its own hostname and
multiprocess directory, two pool children each) admitting ten times the cap
of new zones at the same moment admit exactly the cap between them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, func, select, text

from app.config import Settings
from app.db.models import LabelValue, MetricEvent
from app.metrics.labels import OTHER
from tests.integration.conftest import WorkerFactory
from tests.support.db import migrated_database
from tests.support.services import PostgresDatabase, RedisServer, wait_until
from tests.support.worker import Worker
from workers.celery_app import create_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CAP = 20
HOSTS = 3
CHILDREN = 2
ZONES_PER_MESSAGE = 20


@pytest.fixture
def caps_engine(pg_database: PostgresDatabase) -> Iterator[Engine]:
    """A database of this test's own: the run's shared one holds zones other tests admitted."""
    with migrated_database() as engine:
        yield engine


def waiting_on_locks(engine: Engine) -> int:
    """How many sessions of this database wait for a lock."""
    with engine.connect() as connection:
        query = text(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(connection.execute(query).scalar_one())


def zone_series(worker: Worker) -> dict[str, float]:
    """This worker's panic_requests_total by zone, summed over the other labels."""
    by_zone: dict[str, float] = {}
    for (name, labels), value in worker.scrape().items():
        if name == "panic_requests_total":
            zone = dict(labels)["zone"]
            by_zone[zone] = by_zone.get(zone, 0.0) + value
    return by_zone


def test_hosts_admitting_new_zones_at_once_admit_exactly_the_cap(
    caps_engine: Engine, start_worker: WorkerFactory, redis_server: RedisServer
) -> None:
    """3 hosts x 2 children, 200 new zones at once, MAX_ZONES=20: 20 admitted, 180 under `other`, <= 21 series each.

    A barrier makes the admissions simultaneous: the test holds an EXCLUSIVE
    lock on `label_values` (reads pass, inserts wait) until every child is
    inside a transaction admitting zones, then lets them all go.
    """
    env = {
        "DATABASE_URL": caps_engine.url.render_as_string(hide_password=False),
        "MAX_ZONES": str(CAP),
        "WORKER_PREFETCH_MULTIPLIER": "1",  # one message per child, so every child holds one at the barrier
        "DATABASE_STATEMENT_TIMEOUT_SECONDS": "120",  # the barrier holds statements for a while
    }
    hosts = [start_worker(concurrency=CHILDREN, **env) for _ in range(HOSTS)]
    assert len({worker.hostname for worker in hosts}) == HOSTS
    assert len({worker.multiproc_dir for worker in hosts}) == HOSTS

    zones = [f"z{uuid.uuid4().hex[:10]}" for _ in range(10 * CAP)]
    messages = [zones[i : i + ZONES_PER_MESSAGE] for i in range(0, len(zones), ZONES_PER_MESSAGE)]
    publisher = create_app(Settings(broker_url=redis_server.url))
    with caps_engine.connect() as barrier:
        barrier.execute(text("LOCK TABLE label_values IN EXCLUSIVE MODE"))
        for message in messages:
            events = [
                {
                    "kind": "panic_request",
                    "event_id": str(uuid.uuid4()),
                    "service_type": "security",
                    "status": "requested",
                    "zone": zone,
                }
                for zone in message
            ]
            publisher.send_task("panic_metrics.events.record_events", args=[events], queue="events")
        wait_until(
            lambda: waiting_on_locks(caps_engine) >= HOSTS * CHILDREN,
            timeout=90,
            what="every pool child waiting to admit its zones",
        )
        barrier.rollback()

    def stored() -> int:
        with caps_engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(MetricEvent)).scalar_one())

    wait_until(lambda: stored() >= len(zones), timeout=120, what="every event stored")
    with caps_engine.connect() as connection:
        admitted = set(connection.execute(select(LabelValue.value).where(LabelValue.dimension == "zone")).scalars())
    assert len(admitted) == CAP
    assert admitted <= set(zones)

    def counted() -> float:
        return sum(sum(zone_series(worker).values()) for worker in hosts)

    wait_until(lambda: counted() >= len(zones), timeout=60, what="every stored event counted")
    exposed = [zone_series(worker) for worker in hosts]
    assert sum(sum(series.values()) for series in exposed) == len(zones)
    assert sum(series.get(OTHER, 0.0) for series in exposed) == len(zones) - CAP
    assert {zone for series in exposed for zone in series} - {OTHER} == admitted
    for series in exposed:
        assert len(series) <= CAP + 1
