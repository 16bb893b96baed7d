"""HTTP requests summed in the process count exactly as the same requests one by one.

The property of issue 26: any sequence of requests (any float durations,
many routes and statuses), split into summaries at any points, stored and
counted by the worker, exposes the integer series (requests, buckets,
`_count`) of the same requests recorded one by one, and a `_sum` equal to
`math.fsum` of their durations, bit for bit.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.models import MetricEvent
from app.db.session import _create_engine
from app.ingest import ingest, reset_label_caps
from panic_metrics_client.events import HTTP_DURATION_BUCKETS, HttpSummaryEvent
from panic_metrics_client.http_summaries import HttpSummaries
from tests.support.db import committing_factory, rolled_back_session
from tests.unit.multiproc_helpers import scrape

METHODS = ("GET", "POST", "DELETE")
ROUTES = ("/", "/api/v1/panic", "/api/v1/panic/{request_id}", "/users/{user_id}/credits", "/api/v1/zones")
STATUSES = (200, 201, 404, 500)
MAX_SECONDS = 86_400.0

# Any duration the catalogue takes, with the boundaries and the tiny and huge ones hypothesis likes.
durations = st.one_of(
    st.floats(0, MAX_SECONDS),
    # Sums of these round differently in each order: 0.1 + 0.2 + 0.3 is 0.6000000000000001 left to right.
    st.sampled_from([0.0, *HTTP_DURATION_BUCKETS, 5e-324, 1e-9, 0.1, 0.2, 0.3, 1 / 3, 0.7, MAX_SECONDS]),
    st.floats(0, 0.05),
)
requests = st.lists(
    st.tuples(st.sampled_from(METHODS), st.sampled_from(ROUTES), st.sampled_from(STATUSES), durations),
    min_size=1,
    max_size=80,
)


@pytest.fixture(autouse=True)
def fresh_label_caps() -> Iterator[None]:
    reset_label_caps()
    yield
    reset_label_caps()


def through_json(event: HttpSummaryEvent) -> dict[str, Any]:
    """The payload as the worker receives it."""
    return json.loads(event.model_dump_json())  # type: ignore[no-any-return]


def summarised(reqs: list[tuple[str, str, int, float]], cuts: set[int], prefix: str) -> list[HttpSummaryEvent]:
    """The requests through one HttpSummaries, taken at each cut and at the end."""
    summaries = HttpSummaries()
    events: list[HttpSummaryEvent] = []
    for position, (method, route, status, seconds) in enumerate(reqs):
        if position in cuts:
            taken, refused = summaries.take()
            assert not refused
            events += taken
        summaries.add(method, prefix + route, status, seconds)
    taken, refused = summaries.take()
    assert not refused
    return events + taken


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reqs=requests, cuts=st.sets(st.integers(0, 80), max_size=10), per_message=st.integers(1, 5))
# A summary per request, whose sums a plain float counter would round: 0.6000000000000001, not fsum's 0.6.
@example(reqs=[("GET", "/", 200, 0.1), ("GET", "/", 200, 0.2), ("GET", "/", 200, 0.3)], cuts={1, 2}, per_message=1)
def test_summaries_count_exactly_as_the_requests_one_by_one(
    sqlite_template: Path, reqs: list[tuple[str, str, int, float]], cuts: set[int], per_message: int
) -> None:
    """Integer series equal to the one-by-one path's; `_sum` is math.fsum of the durations."""
    reset_label_caps()
    # A database of this example alone: routes admitted by earlier examples would fill the endpoint cap.
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "example.sqlite3"
        shutil.copyfile(sqlite_template, path)
        engine = _create_engine(f"sqlite:///{path}")
        try:
            with rolled_back_session(engine) as session:
                _check(session, reqs, cuts, per_message)
        finally:
            engine.dispose()


def _check(sqlite_session: Session, reqs: list[tuple[str, str, int, float]], cuts: set[int], per_message: int) -> None:
    tag = "t" + uuid.uuid4().hex[:10]
    summed, single = f"/{tag}s", f"/{tag}o"  # the same requests under two route prefixes
    events = summarised(reqs, cuts, summed)
    factory = committing_factory(sqlite_session)
    for first in range(0, len(events), per_message):
        payloads = [through_json(event) for event in events[first : first + per_message]]
        assert ingest(payloads, kind=None, session_factory=factory).stored == len(payloads)
    one_by_one = [
        {"kind": "http_request", "method": m, "endpoint": single + r, "status": s, "duration": d} for m, r, s, d in reqs
    ]
    assert ingest(one_by_one, kind=None, session_factory=factory).stored == len(reqs)

    exposed = scrape()
    requests_by_key = Counter((m, r, s) for m, r, s, _ in reqs)
    durations_by_route: dict[tuple[str, str], list[float]] = defaultdict(list)
    for method, route, _, seconds in reqs:
        durations_by_route[method, route].append(seconds)

    def value(name: str, prefix: str, route: str, **labels: str) -> float | None:
        return exposed.get_sample_value(name, {"endpoint": prefix + route, **labels})

    for (method, route, status), count in requests_by_key.items():
        for prefix in (summed, single):
            assert value("http_requests_total", prefix, route, method=method, status=str(status)) == count
    for (method, route), seconds in durations_by_route.items():
        for le in (*HTTP_DURATION_BUCKETS, math.inf):
            bound = "+Inf" if le == math.inf else str(float(le))
            expected = sum(1 for d in seconds if d <= le)
            for prefix in (summed, single):
                got = value("http_request_duration_seconds_bucket", prefix, route, method=method, le=bound)
                assert got == expected, (prefix, route, le)
        for prefix in (summed, single):
            assert value("http_request_duration_seconds_count", prefix, route, method=method) == len(seconds)
        # Bit for bit, whatever the split: the one-by-one path rounds at each request instead.
        assert value("http_request_duration_seconds_sum", summed, route, method=method) == math.fsum(seconds)

    stored = sqlite_session.execute(
        select(func.count(), func.sum(MetricEvent.request_count))
        .where(MetricEvent.kind == "http_summary")
        .where(MetricEvent.endpoint.like(f"{summed}%"))
    ).one()
    assert stored == (len(events), len(reqs))
    # Rows: at most one per key and interval, never one per request.
    assert len(events) <= len(requests_by_key) * (len(cuts & set(range(len(reqs)))) + 1)
