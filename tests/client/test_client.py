"""The client on the embedded filesystem broker: validation at the call site, batching, spool, fork."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panic_metrics_client import InvalidEvent, PanicRequestEvent
from panic_metrics_client.batching import BURST_OVER, HIGH_RATE_KINDS
from panic_metrics_client.messages import BATCH_TASK, TASK_OF_KIND, Message, batch_message, event_json, kind_of
from panic_metrics_client.parsing import parse_event
from panic_metrics_client.spool import Spool
from tests.client.conftest import ClientFactory, in_a_forked_child
from tests.support.payloads import KINDS, RULES, sample_payload, valid_payload


def delivered(folder: Path) -> list[dict[str, Any]]:
    """Every task message in the filesystem broker's `events` queue: headers and kwargs."""
    messages = []
    for path in sorted((folder / "queue").glob("*.events.msg")):
        raw = json.loads(path.read_text())
        body = raw["body"]
        if raw["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body).decode()
        args, kwargs, _embed = json.loads(body)
        messages.append({"headers": raw["headers"], "args": args, "kwargs": kwargs})
    return messages


def delivered_event_ids(folder: Path) -> list[str]:
    ids = []
    for message in delivered(folder):
        events = message["kwargs"]["events"] if message["headers"]["task"] == BATCH_TASK else [message["kwargs"]]
        ids += [event["event_id"] for event in events]
    return ids


def on_filesystem(make_client: ClientFactory, folder: Path, **settings: Any) -> Any:
    return make_client(broker_url="filesystem://", broker_folder=folder, **settings)


def test_bad_call_raises_naming_the_field_in_development(make_client: ClientFactory, tmp_path: Path) -> None:
    """In development a bad call raises an InvalidEvent (a ValueError) whose message names the field."""
    client = on_filesystem(make_client, tmp_path / "broker")
    with pytest.raises(ValueError, match="service_type") as caught:
        client.record_fields("panic_request", {"service_type": "police", "status": "requested", "zone": "z"})
    assert isinstance(caught.value, InvalidEvent)
    assert caught.value.field == "service_type"
    assert client.stats()["invalid"] == 1


def test_bad_call_in_production_is_logged_once_per_kind_and_reason_and_counted(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In production a bad call never raises: one log line per kind and reason, every refusal counted."""
    client = on_filesystem(make_client, tmp_path / "broker", mode="production")
    caplog.set_level(logging.WARNING, logger="panic_metrics_client")
    for _ in range(5):
        assert client.record_fields("auth", {"user_type": "admin", "success": "yes"}) is None
    assert client.record_fields("auth", {"success": True}) is None
    refusals = [r for r in caplog.records if r.getMessage() == "metric event refused"]
    assert [(r.kind, r.reason) for r in refusals] == [("auth", "bool_type"), ("auth", "missing")]  # type: ignore[attr-defined]
    assert client.stats()["invalid"] == 6


def test_every_kind_goes_out_under_its_seed_name_and_high_rate_kinds_in_batches(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Low-rate kinds keep their task names; high-rate ones travel in record_events messages of batch_size;
    HTTP requests go out summed, one summary for the key."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder, batch_size=50, batch_interval_ms=60_000)
    ids = {kind: client.record_fields(kind, sample_payload(kind)) for kind in KINDS if kind != "http_request"}
    summary_ids = [client.record_fields("http_summary", sample_payload("http_summary")) for _ in range(120)]
    request_ids = [client.record_fields("http_request", sample_payload("http_request")) for _ in range(7)]
    assert None not in request_ids
    assert client.flush(timeout=30)
    messages = delivered(folder)
    by_task = {m["headers"]["task"]: m for m in messages if m["headers"]["task"] != BATCH_TASK}
    for kind, event_id in ids.items():
        if kind in HIGH_RATE_KINDS:
            continue  # batched with the HTTP requests
        assert by_task[TASK_OF_KIND[kind]]["kwargs"]["event_id"] == str(event_id)
    batches = [m for m in messages if m["headers"]["task"] == BATCH_TASK]
    # Sizes, not order: kombu names filesystem messages by millisecond, so two
    # published in the same millisecond are read back in either order.
    batched = 120 + len(HIGH_RATE_KINDS & set(ids)) + 1  # and the summary of the 7 requests
    assert sorted(len(b["kwargs"]["events"]) for b in batches) == [batched - 100, 50, 50]
    recorded = {str(i) for i in [*ids.values(), *summary_ids]}
    (summed,) = [e for b in batches for e in b["kwargs"]["events"] if e["event_id"] not in recorded]
    assert (summed["kind"], summed["count"]) == ("http_summary", 7)
    assert set(delivered_event_ids(folder)) == {*recorded, summed["event_id"]}
    assert all(isinstance(m["headers"]["published_at"], float) for m in messages)


def test_a_burst_of_low_rate_events_travels_batched_each_event_once(make_client: ClientFactory, tmp_path: Path) -> None:
    """More than BURST_OVER low-rate events in one sender cycle go out in record_events; a few go one message each."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder)
    assert client.flush(timeout=30)
    # Holding the sender's state lock makes it find the whole burst in one cycle, whatever the machine's load.
    with client._sender._state_lock:
        burst = [client.record_fields("auth", sample_payload("auth")) for _ in range(BURST_OVER + 40)]
        burst += [client.record_fields("notification", sample_payload("notification")) for _ in range(5)]
    assert client.flush(timeout=30)
    few = [client.record_fields("auth", sample_payload("auth")) for _ in range(3)]
    assert client.flush(timeout=30)
    messages = delivered(folder)
    batches = [m for m in messages if m["headers"]["task"] == BATCH_TASK]
    assert [len(b["kwargs"]["events"]) for b in batches] == [len(burst)]
    assert [e["event_id"] for e in batches[0]["kwargs"]["events"]] == [str(i) for i in burst]  # in order
    assert batches[0]["headers"]["kwargsrepr"] == repr(
        {"events": f"<{len(burst)} events: auth x{BURST_OVER + 40}, notification x5>"}
    )
    singles = [m for m in messages if m["headers"]["task"] == TASK_OF_KIND["auth"]]
    assert sorted(m["kwargs"]["event_id"] for m in singles) == sorted(str(i) for i in few)
    assert all("kind" not in m["kwargs"] for m in singles)  # as `.delay(**fields)` sends it
    assert sorted(delivered_event_ids(folder)) == sorted(str(i) for i in [*burst, *few])


def test_queued_text_names_its_kind_first_and_survives_the_spool(tmp_path: Path) -> None:
    """The sender reads an event's kind from its JSON without parsing it; a spooled message comes back unchanged."""
    for kind in KINDS:
        text = event_json(parse_event(kind, sample_payload(kind)))
        assert kind_of(text) == kind
        assert json.loads(text)["kind"] == kind
    spool = Spool(tmp_path, max_bytes=10**6)
    message = Message("t", "1", json.dumps({"note": "two\nlines", "n": 1.5}), 1, "{'note': '***'}")
    spool.append([message, batch_message([event_json(parse_event("auth", sample_payload("auth")))])])
    back = [s.message for s in spool.oldest(10)]
    assert back[0] == message
    assert back[1].task == BATCH_TASK
    assert json.loads(back[1].kwargs_json)["events"][0]["kind"] == "auth"
    spool.close()


def test_reprs_mask_customer_subscription_and_request_ids(make_client: ClientFactory, tmp_path: Path) -> None:
    """What Flower shows (argsrepr/kwargsrepr) never holds a customer, subscription or request id."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder)
    secret = f"cust-{uuid.uuid4().hex}"
    client.record_fields("credit_transaction", sample_payload("credit_transaction", customer_id=secret))
    client.record_fields("subscription", sample_payload("subscription", subscription_id=secret))
    client.record_fields("prank_detection", sample_payload("prank_detection", request_id=secret))
    assert client.flush(timeout=30)
    messages = delivered(folder)
    assert len(messages) == 3
    for message in messages:
        assert secret not in message["headers"]["kwargsrepr"]
        assert "***" in message["headers"]["kwargsrepr"]
        assert secret in json.dumps(message["kwargs"])  # the worker still gets the real value


def test_typed_and_batch_forms(make_client: ClientFactory, tmp_path: Path) -> None:
    """record(event) takes a typed model; record_many takes typed events and dicts naming their kind."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder)
    typed = PanicRequestEvent(service_type="fire", status="requested", zone="harbour")  # type: ignore[arg-type]
    assert client.record(typed) == typed.event_id
    many = client.record_many(
        [typed.model_copy(update={"event_id": uuid.uuid4()}), {"kind": "auth", **sample_payload("auth")}]
    )
    assert client.flush(timeout=30)
    assert set(delivered_event_ids(folder)) == {str(typed.event_id), *(str(i) for i in many)}


def _wrong_field(kind: str) -> st.SearchStrategy[tuple[str, str, dict[str, Any]]]:
    """A valid payload of `kind` with exactly one field given a wrong value, and that field's name."""
    names = [name for name in RULES[kind] if name != "event_id"]
    return st.sampled_from(names).flatmap(
        lambda name: st.tuples(
            st.just(kind),
            st.just(name),
            st.builds(lambda payload, bad: {**payload, name: bad}, valid_payload(kind), RULES[kind][name].invalid),
        )
    )


_calls = st.lists(
    st.sampled_from(KINDS).flatmap(
        lambda kind: st.one_of(
            valid_payload(kind).map(lambda payload: (kind, None, payload)),
            _wrong_field(kind),
        )
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=_calls)
def test_valid_calls_all_arrive_and_invalid_ones_are_refused_naming_the_field(
    make_client: ClientFactory, tmp_path_factory: pytest.TempPathFactory, calls: list[tuple[str, str | None, Any]]
) -> None:
    """Any mix of calls: each valid one reaches the broker once (an HTTP request within its route's summary);
    each invalid one raises naming its field."""
    folder = tmp_path_factory.mktemp("broker")
    client = on_filesystem(make_client, folder, spool_dir=folder / "spool")
    accepted = []
    requests = 0
    for kind, wrong, payload in calls:
        if wrong is None:
            event_id = client.record_fields(kind, payload)
            assert event_id is not None
            if kind == "http_request":
                requests += 1
            else:
                accepted.append(str(event_id))
        else:
            with pytest.raises(InvalidEvent) as caught:
                client.record_fields(kind, payload)
            assert caught.value.field is not None
            assert caught.value.field.split(".")[0] == wrong, caught.value
    assert client.flush(timeout=30)
    events = [
        event
        for message in delivered(folder)
        for event in (message["kwargs"]["events"] if message["headers"]["task"] == BATCH_TASK else [message["kwargs"]])
    ]
    summed = [e for e in events if e["event_id"] not in accepted]
    assert all(e["kind"] == "http_summary" for e in summed)
    assert sum(e["count"] for e in summed) == requests
    assert sorted(e["event_id"] for e in events if e["event_id"] in accepted) == sorted(accepted)
    client.close(timeout=5)


def test_spool_drops_the_oldest_past_its_cap_and_counts_them(tmp_path: Path) -> None:
    """Past the cap the oldest messages go first, each dropped event counted."""
    spool = Spool(tmp_path, max_bytes=2_000)
    messages = [Message("t", str(i), json.dumps({"pad": "x" * 150}), 2) for i in range(30)]
    spool.append(messages)
    kept = spool.oldest(100)
    assert spool.bytes <= 2_000
    assert [s.message.task_id for s in kept] == [str(i) for i in range(30 - len(kept), 30)]
    assert spool.dropped_events == 2 * (30 - len(kept))
    assert spool.events == 2 * len(kept)
    spool.close()


def test_a_dead_process_spool_is_adopted_in_order(tmp_path: Path) -> None:
    """A spool file whose owner is gone (its flock free) is taken over by the next spool opened."""
    dead = Spool(tmp_path, max_bytes=10**6)
    dead.append([Message("t", str(i), "{}", 1) for i in range(5)])
    dead._db.close()  # type: ignore[union-attr]  # the process "dies": file kept, lock released
    os.close(dead._lock_file)  # type: ignore[arg-type]
    heir = Spool(tmp_path, max_bytes=10**6)
    heir.open()
    assert [s.message.task_id for s in heir.oldest(10)] == ["0", "1", "2", "3", "4"]
    assert len(list(tmp_path.glob("spool-*.sqlite3"))) == 1
    heir.close()


def test_a_fork_waits_for_the_spool_call_in_progress_and_the_child_uses_sqlite(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """A fork while the sender is inside a spool call (SQLite) waits for it to end, so the child never
    inherits SQLite's locks mid-call and hangs: before, a fork while the sender opened the spool did, 1 in ~150."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder)
    assert client.flush(timeout=30)
    spool = client._spool
    in_call, release = threading.Event(), threading.Event()

    def a_long_spool_call() -> None:
        with spool._lock:  # what every SQLite call of the spool holds
            in_call.set()
            release.wait(5)

    holder = threading.Thread(target=a_long_spool_call)
    holder.start()
    assert in_call.wait(5)
    threading.Timer(0.5, release.set).start()

    def child() -> str:  # its own spool (SQLite) and sender work; the monotonic clock is the machine's
        began = time.monotonic()
        child_id = client.record_fields("auth", sample_payload("auth"))
        return f"{began} {child_id} {client.flush(timeout=30)}"

    started = time.monotonic()
    began, child_id, ok = in_a_forked_child(child).split()
    holder.join(5)
    assert float(began) - started >= 0.4  # the fork waited for the call in progress
    assert ok == "True"
    assert child_id in delivered_event_ids(folder)
    assert client.record_fields("auth", sample_payload("auth")) is not None
    assert client.flush(timeout=30)  # the parent's spool is usable again


def test_a_forked_child_gets_a_working_sender(make_client: ClientFactory, tmp_path: Path) -> None:
    """After fork (a pre-forking web server) the child's events are sent by the child's own sender."""
    folder = tmp_path / "broker"
    client = on_filesystem(make_client, folder)
    parent_id = client.record_fields("auth", sample_payload("auth"))
    assert client.flush(timeout=30)

    def child() -> str:
        child_id = client.record_fields("auth", sample_payload("auth"))
        return f"{child_id} {client.flush(timeout=30)}"

    child_id, ok = in_a_forked_child(child).split()
    assert ok == "True"
    assert sorted(delivered_event_ids(folder)) == sorted([str(parent_id), child_id])
