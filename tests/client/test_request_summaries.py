"""HTTP requests summed in the process: one http_summary per (method, route, status) and interval, counts exact."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response
from hypothesis import given
from hypothesis import strategies as st

from panic_metrics_client import (
    ClientSettings,
    InvalidEvent,
    PanicMetricsMiddleware,
    record_http_request_metrics,
    state,
)
from panic_metrics_client.events import HTTP_DURATION_BUCKETS, MAX_DURATION_SECONDS
from panic_metrics_client.messages import BATCH_TASK
from tests.client.conftest import ClientFactory, in_a_forked_child
from tests.client.test_client import delivered, on_filesystem
from tests.support.services import wait_until

Key = tuple[str, str, int]


def events_of(folder: Path, kind: str) -> list[dict[str, Any]]:
    """Every event of `kind` in the filesystem broker's queue."""
    batched = [e for m in delivered(folder) if m["headers"]["task"] == BATCH_TASK for e in m["kwargs"]["events"]]
    return [e for e in batched if e["kind"] == kind]


def counts_by_key(summaries: list[dict[str, Any]]) -> Counter[Key]:
    """Requests per (method, route, status), added up over the summaries."""
    counts: Counter[Key] = Counter()
    for summary in summaries:
        counts[summary["method"], summary["endpoint"], summary["status"]] += summary["count"]
    return counts


def build_app() -> FastAPI:
    app = FastAPI()

    @app.get("/api/v1/panic/{request_id}")
    def panic(request_id: str) -> dict[str, str]:
        return {"id": request_id}

    @app.post("/api/v1/panic")
    def raise_panic(response: Response) -> None:
        response.status_code = 201

    return app


def test_many_requests_through_the_middleware_become_one_summary_per_route_and_status(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Hundreds of requests: after flush, one summary per (method, route, status) whose count is what was served."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, summary_interval_seconds=3600)
    app = build_app()
    app.add_middleware(PanicMetricsMiddleware, client=client)
    served: Counter[Key] = Counter()

    async def requests() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            for i in range(300):
                if i % 3 == 0:
                    response = await http.post("/api/v1/panic")
                    served["POST", "/api/v1/panic", response.status_code] += 1
                elif i % 7 == 0:
                    response = await http.get(f"/nowhere/{i}")
                    served["GET", "/{unmatched}", response.status_code] += 1
                else:
                    response = await http.get(f"/api/v1/panic/{i}")
                    served["GET", "/api/v1/panic/{request_id}", response.status_code] += 1

    asyncio.run(requests())
    assert client.stats()["http_requests_pending"] == 300
    assert client.flush(timeout=30)
    assert client.stats()["http_requests_pending"] == 0
    summaries = events_of(folder, "http_summary")
    assert len(summaries) == len(served) == 3  # one per key: the interval was cut once, by the flush
    assert counts_by_key(summaries) == served
    assert not events_of(folder, "http_request")
    for summary in summaries:
        assert sum(summary["buckets"]) == summary["count"]
        assert datetime.fromisoformat(summary["interval_start"]) <= datetime.fromisoformat(summary["occurred_at"])


def test_a_short_interval_cuts_several_summaries_whose_counts_add_up(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Without a flush the sender cuts a summary every interval; the intervals do not overlap and no request is lost."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, summary_interval_seconds=0.05, batch_interval_ms=50)
    recorded = 0

    def record_some() -> bool:
        nonlocal recorded
        for _ in range(10):
            client.record_http_request(method="GET", endpoint="/api/v1/zones", status=200, duration=0.003)
        recorded += 10
        return len(events_of(folder, "http_summary")) >= 3

    wait_until(record_some, timeout=30, what="three summaries sent without a flush")
    assert client.flush(timeout=30)
    summaries = sorted(events_of(folder, "http_summary"), key=lambda s: s["interval_start"])
    assert sum(s["count"] for s in summaries) == recorded
    assert sum(s["buckets"][0] for s in summaries) == recorded  # 3 ms: the first bucket, up to 5 ms
    for earlier, later in itertools.pairwise(summaries):
        assert datetime.fromisoformat(earlier["occurred_at"]) <= datetime.fromisoformat(later["interval_start"])


def test_close_sends_the_open_interval(make_client: ClientFactory, tmp_path: Path) -> None:
    """At close (exit and SIGTERM go through it) the requests of the interval still open are sent, not lost."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, summary_interval_seconds=3600, batch_interval_ms=600_000)
    for i in range(25):
        client.record_http_request(method="DELETE", endpoint="/api/v1/credits/{id}", status=204, duration=0.01 * i)
    assert client.stats()["http_requests_pending"] == 25
    client.close(timeout=30)
    (summary,) = events_of(folder, "http_summary")
    assert (summary["method"], summary["endpoint"], summary["status"], summary["count"]) == (
        "DELETE",
        "/api/v1/credits/{id}",
        204,
        25,
    )
    assert math.fsum(summary["duration_sum"]) == math.fsum(0.01 * i for i in range(25))


def test_requests_finishing_after_close_are_spooled_as_summaries_at_the_server_s_end(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Requests answered during a graceful shutdown, after SIGTERM's close, stay summed (not a row each) and
    are spooled for the next process when the server's lifespan ends, or by the exit hook's second close."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, summary_interval_seconds=3600)
    client.close(timeout=30)
    for _ in range(3):
        client.record_http_request(method="GET", endpoint="/api/v1/zones", status=200, duration=0.2)
    assert client.stats()["http_requests_pending"] == 3
    assert client.stats()["spooled"] == 0
    client.server_stopped()  # what the middleware calls when the ASGI lifespan ends
    assert client.stats()["spooled"] == client.stats()["spool_events"] == 1  # one summary of 3 requests
    assert client.stats()["http_requests_pending"] == 0
    client.record_http_request(method="GET", endpoint="/api/v1/zones", status=200, duration=0.2)
    client.close(timeout=30)  # the exit hook
    assert client.stats()["spool_events"] == 2
    assert client.stats()["http_requests_pending"] == 0


def test_a_forked_child_does_not_resend_the_parents_table(make_client: ClientFactory, tmp_path: Path) -> None:
    """After fork the child's table starts empty: each request is sent once, by the process that served it."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, summary_interval_seconds=3600)
    assert client.flush(timeout=30)  # the sender started and idle at the fork
    for _ in range(5):
        client.record_http_request(method="GET", endpoint="/api/v1/zones", status=200, duration=0.01)

    def child() -> str:  # its own requests
        pending = client.stats()["http_requests_pending"]
        for _ in range(3):
            client.record_http_request(method="GET", endpoint="/api/v1/zones", status=200, duration=0.01)
        return f"{pending} {client.flush(timeout=30)}"

    assert in_a_forked_child(child).split() == ["0", "True"]
    assert client.flush(timeout=30)
    assert sorted(s["count"] for s in events_of(folder, "http_summary")) == [3, 5]


def test_record_http_request_metrics_from_app_code_is_summed(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seed's per-request call validates as before (raising in development) and lands in the table."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, summary_interval_seconds=3600)
    monkeypatch.setattr(state, "_client", client)
    fields = {"method": "PUT", "endpoint": "/api/v1/firms/{firm_id}", "status": 200, "duration": 0.3}
    assert record_http_request_metrics(**fields) is not None
    assert record_http_request_metrics.delay(**fields) is not None
    assert record_http_request_metrics.apply_async(kwargs=fields) is not None
    with pytest.raises(InvalidEvent) as caught:
        record_http_request_metrics(**{**fields, "endpoint": "/api/v1/firms/8812"})
    assert caught.value.reason == "raw_path"
    assert client.stats()["http_requests_pending"] == 3
    assert client.flush(timeout=30)
    (summary,) = events_of(folder, "http_summary")
    assert (summary["method"], summary["endpoint"], summary["count"]) == ("PUT", "/api/v1/firms/{firm_id}", 3)
    assert summary["buckets"][HTTP_DURATION_BUCKETS.index(0.5)] == 3
    assert not events_of(folder, "http_request")
    assert client.stats()["invalid"] == 1


def test_a_raw_path_is_refused_when_its_summary_is_built_counted_and_logged_once(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests under a raw path never reach the broker: each counted as invalid, the reason logged once."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, mode="production")
    caplog.set_level(logging.WARNING, logger="panic_metrics_client")
    for request_id in ("12345", "12345", "777"):
        client.record_http_request(method="GET", endpoint=f"/api/v1/panic/{request_id}", status=200, duration=0.1)
    client.record_http_request(method="GET", endpoint="/api/v1/panic/{request_id}", status=200, duration=0.1)
    assert client.flush(timeout=30)
    client.record_http_request(method="GET", endpoint="/api/v1/panic/999", status=200, duration=0.1)
    assert client.flush(timeout=30)
    assert client.stats()["invalid"] == 4
    refusals = [r for r in caplog.records if r.getMessage() == "metric event refused"]
    assert [(r.kind, r.reason) for r in refusals] == [("http_summary", "raw_path")]  # type: ignore[attr-defined]
    assert [s["endpoint"] for s in events_of(folder, "http_summary")] == ["/api/v1/panic/{request_id}"]


@pytest.mark.parametrize(
    "case",
    [
        ("get", 0.2, "GET", HTTP_DURATION_BUCKETS.index(0.25), 0.2),
        ("BREW", 0.2, "GET", HTTP_DURATION_BUCKETS.index(0.25), 0.2),
        ("PATCH", -1.0, "PATCH", 0, 0.0),
        ("PATCH", math.nan, "PATCH", 0, 0.0),
        ("POST", math.inf, "POST", len(HTTP_DURATION_BUCKETS), MAX_DURATION_SECONDS),
        ("POST", 10**7, "POST", len(HTTP_DURATION_BUCKETS), MAX_DURATION_SECONDS),
    ],
)
def test_an_unknown_method_counts_as_get_and_the_duration_is_clamped(
    make_client: ClientFactory, tmp_path: Path, case: tuple[str, float, str, int, float]
) -> None:
    """As the middleware always did: an unknown method is GET; a duration is kept within [0, a day]."""
    method, duration, recorded_method, bucket, seconds = case
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder)
    client.record_http_request(method=method, endpoint="/api/v1/zones", status=200, duration=duration)
    assert client.flush(timeout=30)
    (summary,) = events_of(folder, "http_summary")
    assert summary["method"] == recorded_method
    assert summary["buckets"][bucket] == 1
    assert math.fsum(summary["duration_sum"]) == seconds
    assert client.stats()["invalid"] == 0


def test_an_idle_process_does_not_wake_for_summaries(make_client: ClientFactory, tmp_path: Path) -> None:
    """An empty table adds no wake-up, however long ago the last summary; a request in it wakes the sender on time."""
    client = on_filesystem(make_client, tmp_path / "broker", summary_interval_seconds=0.5, batch_interval_ms=60_000)
    client.start()
    assert client.flush(timeout=30)
    sender = client._sender
    sender._last_summary -= 3600  # long overdue, but nothing to summarise
    assert sender._seconds_to_next_cycle() > 30
    client.record_http_request(method="GET", endpoint="/api/v1/zones", status=200, duration=0.01)
    assert sender._seconds_to_next_cycle() == 0.0
    sender._last_summary = time.monotonic()
    assert 0.0 < sender._seconds_to_next_cycle() <= 0.5


def test_eight_threads_adding_while_the_sender_takes_lose_and_double_nothing(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """8 threads x 5,000 requests, in rounds, taken during every round and between rounds: every total exact."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, summary_interval_seconds=0.005, batch_interval_ms=20, batch_size=50)
    threads, rounds, per_round = 8, 5, 1_000
    statuses = (200, 201, 404, 500)
    durations = (0.001, 0.02, 0.3, 2.0, 45.0)
    barrier = threading.Barrier(threads + 1)

    def serve(worker: int) -> None:
        for _ in range(rounds):
            barrier.wait()  # the round starts
            for i in range(per_round):
                client.record_http_request(
                    method="GET",
                    endpoint=f"/api/v1/worker{worker % 2}",
                    status=statuses[i % len(statuses)],
                    duration=durations[i % len(durations)],
                )
            barrier.wait()  # the round is served

    running = [threading.Thread(target=serve, args=(n,)) for n in range(threads)]
    for thread in running:
        thread.start()
    for _ in range(rounds):
        barrier.wait()
        assert client.flush(timeout=60)  # a take while the threads add (the sender also takes every 5 ms)
        barrier.wait()
        assert client.flush(timeout=60)  # a take between rounds: each round's requests in summaries of their own
    for thread in running:
        thread.join()
    summaries = events_of(folder, "http_summary")
    keys = {(s["endpoint"], s["status"]) for s in summaries}
    assert len(summaries) >= rounds * len(keys)
    expected: Counter[Key] = Counter()
    every_duration = []
    for worker in range(threads):
        for _ in range(rounds):
            for i in range(per_round):
                expected["GET", f"/api/v1/worker{worker % 2}", statuses[i % len(statuses)]] += 1
                every_duration.append(durations[i % len(durations)])
    assert counts_by_key(summaries) == expected
    assert math.fsum(p for s in summaries for p in s["duration_sum"]) == math.fsum(every_duration)
    buckets = [sum(column) for column in zip(*(s["buckets"] for s in summaries), strict=True)]
    assert buckets[-1] == every_duration.count(45.0)
    assert sum(buckets) == threads * rounds * per_round
    assert client.stats()["http_requests_pending"] == client.stats()["invalid"] == 0


@given(seconds=st.floats(min_value=1e-3, max_value=1e6, allow_nan=False))
def test_the_summary_interval_is_read_from_the_environment(seconds: float) -> None:
    """PANIC_METRICS_SUMMARY_INTERVAL_SECONDS sets the interval; unset or empty, it is 10 s."""
    environ = {"PANIC_METRICS_SUMMARY_INTERVAL_SECONDS": repr(seconds)}
    assert ClientSettings.from_env(environ).summary_interval_seconds == seconds
    assert ClientSettings.from_env({"PANIC_METRICS_SUMMARY_INTERVAL_SECONDS": " "}).summary_interval_seconds == 10


@given(raw=st.one_of(st.floats(max_value=0), st.just(math.nan)).map(repr))
def test_a_summary_interval_not_above_zero_is_refused(raw: str) -> None:
    """Zero, a negative interval or NaN is refused at start, naming the variable."""
    with pytest.raises(ValueError, match="PANIC_METRICS_SUMMARY_INTERVAL_SECONDS"):
        ClientSettings.from_env({"PANIC_METRICS_SUMMARY_INTERVAL_SECONDS": raw})
