"""Zone and firm aggregation of one five-minute window, with 1 M and then 10 M events of history.

The window always holds the same panic requests; only the history before it
grows tenfold. If the window query reads only the window (the partial index
on occurred_at), the time stays flat. Goal: ratio 10 M / 1 M <= 1.5. Prints
the query plan's node types and the indexes it uses.

History is generated in PostgreSQL (INSERT ... SELECT generate_series) with
the secondary indexes dropped and rebuilt afterwards, in a database this
script creates and drops itself (the test role of scripts/test-services.sh).

    .venv/bin/python bench/aggregate.py [--history 1000000 10000000] [--window-events 2000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="panic-metrics-bench-")

from tests.support.services import PostgresDatabase

DATABASE = PostgresDatabase()
os.environ["DATABASE_URL"] = DATABASE.url

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.orm import Session

from app.aggregations.performance import SUBJECT_TYPES, aggregate_window, window_query_postgresql
from tests.support.db import migrate

WINDOW_START = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
WINDOW_END = WINDOW_START + timedelta(minutes=5)
HISTORY_DAYS = 30
SECONDARY_INDEXES = {
    "ix_metric_events_kind_occurred_at": "ON metric_events (kind, occurred_at)",
    "ix_metric_events_panic_window": "ON metric_events (occurred_at, zone, firm_id) WHERE kind = 'panic_request'",
    "ix_metric_events_subscription": "ON metric_events (subscription_id, occurred_at) WHERE kind = 'subscription'",
}
CHUNK = 1_000_000

# One row in ten of the history is a panic request of 20 zones and 50 firms;
# the rest are logins and web requests, as in production traffic.
HISTORY = """
INSERT INTO metric_events (event_id, kind, occurred_at, stored_at, service_type, status, zone, firm_id,
                           response_time_seconds, user_type, success, account_locked,
                           method, endpoint, http_status, duration_seconds)
SELECT gen_random_uuid(), kind, occurred_at, occurred_at,
       CASE WHEN panic THEN (ARRAY['security','medical','fire'])[1 + g % 3] END,
       CASE WHEN panic THEN (ARRAY['requested','accepted','arrived','completed','cancelled','prank'])[1 + g % 6] END,
       CASE WHEN panic THEN 'zone-' || (g % 20) END,
       CASE WHEN panic THEN 'firm-' || (g % 50) END,
       CASE WHEN panic AND g % 6 IN (1, 2, 3) THEN random() * 900 END,
       CASE WHEN kind = 'auth' THEN 'registered_user' END,
       CASE WHEN kind = 'auth' THEN g % 9 <> 0 END,
       CASE WHEN kind = 'auth' THEN g % 50 = 0 END,
       CASE WHEN kind = 'http_request' THEN 'GET' END,
       CASE WHEN kind = 'http_request' THEN '/api/v1/panic' END,
       CASE WHEN kind = 'http_request' THEN 200 END,
       CASE WHEN kind = 'http_request' THEN random() END
FROM (
    SELECT g, g % 10 = 0 AS panic,
           CASE WHEN g % 10 = 0 THEN 'panic_request' WHEN g % 10 < 4 THEN 'auth' ELSE 'http_request' END AS kind,
           CAST(:window_start AS timestamptz) - random() * interval '{days} days' AS occurred_at
    FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g
) AS history
"""
WINDOW = """
INSERT INTO metric_events (event_id, kind, occurred_at, service_type, status, zone, firm_id, response_time_seconds)
SELECT gen_random_uuid(), 'panic_request', CAST(:window_start AS timestamptz) + random() * interval '299 seconds',
       'security', (ARRAY['requested','accepted','arrived','completed','cancelled','prank'])[1 + g % 6],
       'zone-' || (g % 20), 'firm-' || (g % 50), CASE WHEN g % 6 IN (1, 2, 3) THEN random() * 900 END
FROM generate_series(1, :events) AS g
"""


def load_history(engine: Engine, *, first: int, last: int) -> float:
    """Insert history rows first..last without secondary indexes, then rebuild them; seconds taken."""
    started = time.perf_counter()
    with engine.begin() as connection:
        for name in SECONDARY_INDEXES:
            connection.execute(text(f"DROP INDEX IF EXISTS {name}"))
    for low in range(first, last + 1, CHUNK):
        high = min(low + CHUNK - 1, last)
        with engine.begin() as connection:
            connection.execute(text("SET LOCAL synchronous_commit = off"))
            connection.execute(
                text(HISTORY.format(days=HISTORY_DAYS)), {"window_start": WINDOW_START, "first": low, "last": high}
            )
        print(f"  loaded {high:>11,} rows ({time.perf_counter() - started:.0f} s)", flush=True)
    with engine.begin() as connection:
        connection.execute(text("SET LOCAL maintenance_work_mem = '256MB'"))
        for name, definition in SECONDARY_INDEXES.items():
            connection.execute(text(f"CREATE INDEX {name} {definition}"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE metric_events"))
    return time.perf_counter() - started


def timed_aggregation(engine: Engine, repeat: int) -> dict[str, float]:
    """Median seconds of aggregate_window over the window, per subject type (after one warm-up)."""
    medians = {}
    with Session(engine) as session:
        for subject_type in SUBJECT_TYPES:
            aggregate_window(session, subject_type=subject_type, start=WINDOW_START, end=WINDOW_END)
            times = []
            for _ in range(repeat):
                started = time.perf_counter()
                rows = aggregate_window(session, subject_type=subject_type, start=WINDOW_START, end=WINDOW_END)
                times.append(time.perf_counter() - started)
            medians[subject_type] = statistics.median(times)
            print(f"  {subject_type}: {len(rows)} subjects, median {medians[subject_type] * 1000:.2f} ms")
    return medians


def plan_nodes(node: dict[str, Any]) -> Iterator[tuple[str, str | None, int]]:
    """(node type, index name, actual rows) of a JSON plan, depth first."""
    yield node["Node Type"], node.get("Index Name"), int(node.get("Actual Rows", 0))
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


def explain(connection: Connection) -> list[tuple[str, str | None, int]]:
    """The executed plan of the zone window query."""
    compiled = window_query_postgresql("zone", WINDOW_START, WINDOW_END).compile(dialect=connection.dialect)
    sql = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + compiled.string
    (plan,) = connection.exec_driver_sql(sql, compiled.params).scalar_one()
    return list(plan_nodes(plan["Plan"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, nargs=2, default=(1_000_000, 10_000_000), metavar=("SMALL", "LARGE"))
    parser.add_argument("--window-events", type=int, default=2000, help="panic requests in the measured window")
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per subject type (median reported)")
    args = parser.parse_args()
    small, large = args.history

    DATABASE.create()
    engine = create_engine(DATABASE.url)
    try:
        migrate(engine)
        with engine.begin() as connection:
            connection.execute(text(WINDOW), {"window_start": WINDOW_START, "events": args.window_events})
        results = {}
        for size, first in ((small, 1), (large, small + 1)):
            print(f"history {size:,} events:")
            print(f"  load and index: {load_history(engine, first=first, last=size):.0f} s")
            results[size] = timed_aggregation(engine, args.repeat)
            with engine.connect() as connection:
                nodes = explain(connection)
            print("  plan:", " -> ".join(f"{kind}[{index}]" if index else kind for kind, index, _ in nodes))
        print()
        print(f"{'subject':<8}{f'{small:,} (ms)':>16}{f'{large:,} (ms)':>18}{'ratio':>8}   goal <= 1.5")
        for subject_type in SUBJECT_TYPES:
            low, high = results[small][subject_type], results[large][subject_type]
            print(f"{subject_type:<8}{low * 1000:>16.2f}{high * 1000:>18.2f}{high / low:>8.2f}")
        print("plan node types:", ", ".join(sorted({kind for kind, _, _ in nodes})))
        print("indexes used:", ", ".join(sorted({index for _, index, _ in nodes if index})) or "none")
    finally:
        engine.dispose()
        DATABASE.drop()


if __name__ == "__main__":
    main()
