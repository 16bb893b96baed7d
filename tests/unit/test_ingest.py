"""ingest: valid payloads are stored once and counted after their commit; malformed ones are counted, never stored."""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db.models import MetricEvent, RejectedEvent
from app.db.session import session_scope
from app.ingest import (
    Attempt,
    DatabaseUnavailable,
    IngestResult,
    MetricsUnwritable,
    ingest,
    reset_label_caps,
    store_and_count,
    validate,
)
from tests.support.db import committing_factory
from tests.support.disk import SmallTmpfs, small_tmpfs
from tests.support.payloads import KINDS, malformed_payload, sample_payload, valid_payload
from tests.unit.multiproc_helpers import scrape

SessionFactory = Callable[[], AbstractContextManager[Session]]
# A payload this test knows to be invalid, and why.
SURPLUS_FIELD = {"surplus": 1}
SURPLUS_REASON = "extra_forbidden"


@pytest.fixture(autouse=True)
def fresh_label_caps() -> Iterator[None]:
    """Each test starts with no admitted label values in this process; its database starts empty too."""
    reset_label_caps()
    yield
    reset_label_caps()


@pytest.fixture
def tag() -> str:
    """A label value of this test alone (zone, user type, plan, ...), so its series stand apart."""
    return f"t{uuid.uuid4().hex[:10]}"


def delta(before: CollectorRegistry, after: CollectorRegistry, name: str, **labels: str) -> float:
    """How much one series moved between two scrapes."""
    return (after.get_sample_value(name, labels) or 0.0) - (before.get_sample_value(name, labels) or 0.0)


def stored_count(session: Session, event_ids: Iterable[Any] | None = None) -> int:
    """Rows in metric_events, or rows among `event_ids`."""
    query = select(func.count()).select_from(MetricEvent)
    if event_ids is not None:
        query = query.where(MetricEvent.event_id.in_([uuid.UUID(str(e)) for e in event_ids]))
    return session.scalar(query) or 0


def business_payload(kind: str, tag: str) -> tuple[dict[str, Any], list[tuple[str, dict[str, str], float]]]:
    """A valid payload of `kind` labelled with `tag` where it has a free label, and the series it moves by how much."""
    endpoint = f"/{tag}/{{request_id}}"
    overrides: dict[str, dict[str, Any]] = {
        "panic_request": {"zone": tag},
        "auth": {"user_type": tag},
        "notification": {"notification_type": tag},
        "subscription": {"plan": tag},
        "credit_transaction": {},
        "prank_detection": {"zone": tag, "detector": tag},
        "http_request": {"endpoint": endpoint},
        "http_summary": {"endpoint": endpoint},
        "gauge_report": {"source": tag},
    }
    series: dict[str, list[tuple[str, dict[str, str], float]]] = {
        "panic_request": [
            ("panic_requests_total", {"service_type": "security", "status": "accepted", "zone": tag}, 1),
            ("panic_request_response_time_seconds_count", {"service_type": "security", "zone": tag}, 1),
            ("panic_request_response_time_seconds_sum", {"service_type": "security", "zone": tag}, 180.5),
        ],
        "auth": [
            ("auth_login_attempts_total", {"user_type": tag, "result": "failure"}, 1),
            ("auth_account_lockouts_total", {"user_type": tag}, 1),
        ],
        "notification": [
            ("notifications_total", {"channel": "sms", "status": "delivered", "notification_type": tag}, 1),
        ],
        "subscription": [("subscription_events_total", {"plan": tag, "action": "purchased"}, 1)],
        # credit types are a closed set: no label of the test's own
        "credit_transaction": [
            ("credit_transactions_total", {"type": "purchase"}, 1),
            ("credits_total", {"type": "purchase"}, 50),
        ],
        "prank_detection": [("prank_detections_total", {"zone": tag, "detector": tag}, 1)],
        "http_request": [
            ("http_requests_total", {"method": "GET", "endpoint": endpoint, "status": "200"}, 1),
            ("http_request_duration_seconds_count", {"method": "GET", "endpoint": endpoint}, 1),
        ],
        # The sample summary: three requests, of 7 ms, 42 ms and 0.8 s.
        "http_summary": [
            ("http_requests_total", {"method": "GET", "endpoint": endpoint, "status": "200"}, 3),
            ("http_request_duration_seconds_count", {"method": "GET", "endpoint": endpoint}, 3),
            ("http_request_duration_seconds_bucket", {"method": "GET", "endpoint": endpoint, "le": "0.01"}, 1),
            ("http_request_duration_seconds_bucket", {"method": "GET", "endpoint": endpoint, "le": "0.05"}, 2),
        ],
        "gauge_report": [
            ("cache_requests_total", {"result": "hit"}, 30),
            ("cache_requests_total", {"result": "miss"}, 4),
        ],
    }
    return sample_payload(kind, **overrides[kind]), series[kind]


def assert_counted(before: CollectorRegistry, after: CollectorRegistry, kind: str, tag: str, times: int) -> None:
    """The kind's business series and its stored count moved by `times` events."""
    _, series = business_payload(kind, tag)
    for name, labels, per_event in series:
        assert delta(before, after, name, **labels) == per_event * times, (name, labels)
    assert delta(before, after, "metrics_events_stored_total", kind=kind) == times


def failing_after_insert(session: Session, error: BaseException) -> SessionFactory:
    """A session factory that stores into the test's session, then fails before the commit."""
    commit_into = committing_factory(session)

    @contextmanager
    def factory() -> Iterator[Session]:
        with commit_into() as transaction:
            yield transaction
            raise error

    return factory


# --- malformed payloads among valid ones -------------------------------------------------------

# 100 examples of 5 to 8 malformed payloads: at least 500 malformed payloads per kind and
# database, each through ingest with the valid payloads of its message.
MALFORMED_PER_KIND = 500


@pytest.mark.parametrize("kind", KINDS)
def test_mixed_batch_stores_only_valid_payloads_and_counts_each_rejection_by_reason(
    db_session: Session, kind: str, tag: str
) -> None:
    """Of a message mixing valid and malformed payloads, only the valid are stored; each rejection counts by reason."""
    factory = committing_factory(db_session)
    malformed_seen = 0

    @settings(max_examples=100, deadline=None)
    @given(
        valid=st.lists(valid_payload(kind), max_size=3),
        malformed=st.lists(malformed_payload(kind), min_size=5, max_size=8),
        data=st.data(),
    )
    def check(valid: list[dict[str, Any]], malformed: list[Any], data: st.DataObject) -> None:
        nonlocal malformed_seen
        # Fresh ids (hypothesis may draw one id twice) and this test's zone.
        valid = [{**p, "event_id": str(uuid.uuid4())} | ({"zone": tag} if "zone" in p else {}) for p in valid]
        batch = data.draw(st.permutations(valid + malformed))
        _, rejections = validate(malformed, kind=kind)
        assert len(rejections) == len(malformed)
        reasons = Counter(invalid.reason for invalid in rejections)
        rows, before = stored_count(db_session), scrape()

        result = ingest(batch, kind=kind, session_factory=factory)

        after = scrape()
        assert result == IngestResult(stored=len(valid), duplicates=0, rejected=len(malformed))
        assert stored_count(db_session) - rows == len(valid)
        assert stored_count(db_session, [p["event_id"] for p in valid]) == len(valid)
        assert delta(before, after, "metrics_events_stored_total", kind=kind) == len(valid)
        assert delta(before, after, "metrics_events_duplicate_total", kind=kind) == 0
        for reason, times in reasons.items():
            assert delta(before, after, "metrics_events_rejected_total", kind=kind, reason=reason) == times
        malformed_seen += len(malformed)

    check()
    assert malformed_seen >= MALFORMED_PER_KIND


def test_mixed_kinds_on_the_batch_path_store_only_valid_payloads(db_session: Session) -> None:
    """The batch task's message of many kinds stores its valid payloads and counts each rejection under its kind."""
    factory = committing_factory(db_session)
    any_kind = st.sampled_from(KINDS)

    @settings(max_examples=50, deadline=None)
    @given(
        valid=st.lists(any_kind.flatmap(lambda k: valid_payload(k, with_kind=True)), max_size=6),
        malformed=st.lists(any_kind.flatmap(lambda k: malformed_payload(k, with_kind=True)), min_size=1, max_size=6),
        data=st.data(),
    )
    def check(valid: list[dict[str, Any]], malformed: list[Any], data: st.DataObject) -> None:
        valid = [{**p, "event_id": str(uuid.uuid4())} for p in valid]
        batch = data.draw(st.permutations(valid + malformed))
        _, rejections = validate(malformed, kind=None)
        assert len(rejections) == len(malformed)
        before = scrape()

        result = ingest(batch, kind=None, session_factory=factory)

        after = scrape()
        assert result == IngestResult(stored=len(valid), duplicates=0, rejected=len(malformed))
        assert stored_count(db_session, [p["event_id"] for p in valid]) == len(valid)
        for kind, times in Counter(p["kind"] for p in valid).items():
            assert delta(before, after, "metrics_events_stored_total", kind=kind) == times
        for (kind, reason), times in Counter((r.kind, r.reason) for r in rejections).items():
            assert delta(before, after, "metrics_events_rejected_total", kind=kind, reason=reason) == times

    check()


def test_message_of_malformed_payloads_only_is_kept_and_counted_once_per_message(db_session: Session) -> None:
    """Rejected payloads are stored with their reason, keyed by message and position: a redelivery counts nothing."""
    factory = committing_factory(db_session)
    bad = [sample_payload("auth", **SURPLUS_FIELD), {"user_type": "guest"}, None]
    message_id = f"msg-{uuid.uuid4()}"
    before = scrape()
    assert ingest(bad, kind="auth", message_id=message_id, session_factory=factory) == IngestResult(rejected=3)
    assert ingest(bad, kind="auth", message_id=message_id, session_factory=factory) == IngestResult(rejected=3)
    after = scrape()
    assert delta(before, after, "metrics_events_rejected_total", kind="auth", reason=SURPLUS_REASON) == 1
    assert delta(before, after, "metrics_events_rejected_total", kind="auth", reason="missing") == 1
    assert delta(before, after, "metrics_events_rejected_total", kind="auth", reason="model_type") == 1
    kept = db_session.execute(
        select(RejectedEvent.position, RejectedEvent.reason, RejectedEvent.payload)
        .where(RejectedEvent.message_id == message_id)
        .order_by(RejectedEvent.position)
    ).all()
    assert [(p, r) for p, r, _ in kept] == [(0, SURPLUS_REASON), (1, "missing"), (2, "model_type")]
    assert json.loads(kept[1][2]) == {"user_type": "guest"}


def test_worker_keeps_serving_after_malformed_payloads(db_session: Session, tag: str) -> None:
    """After messages of malformed payloads the next valid event is stored and counted as usual."""
    factory = committing_factory(db_session)
    for bad in ([None], [sample_payload("auth", success="yes")], [sample_payload("auth", **SURPLUS_FIELD)]):
        assert ingest(bad, kind="auth", session_factory=factory).rejected == 1
    payload, _ = business_payload("auth", tag)
    before = scrape()
    assert ingest([payload], kind="auth", session_factory=factory) == IngestResult(stored=1)
    assert_counted(before, scrape(), "auth", tag, times=1)


# --- each event stored and counted once ---------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_event_ingested_twice_is_stored_once_and_counted_as_a_duplicate(
    db_session: Session, kind: str, tag: str
) -> None:
    """A redelivered event is stored once; the second delivery moves only the duplicate counter."""
    factory = committing_factory(db_session)
    payload, _ = business_payload(kind, tag)
    before = scrape()
    assert ingest([payload], kind=kind, session_factory=factory) == IngestResult(stored=1)
    middle = scrape()
    assert ingest([payload], kind=kind, session_factory=factory) == IngestResult(duplicates=1)
    after = scrape()

    assert stored_count(db_session, [payload["event_id"]]) == 1
    assert_counted(before, middle, kind, tag, times=1)
    assert_counted(middle, after, kind, tag, times=0)
    assert delta(before, middle, "metrics_events_duplicate_total", kind=kind) == 0
    assert delta(middle, after, "metrics_events_duplicate_total", kind=kind) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_duplicates_inside_one_batch_are_stored_and_counted_once(db_session: Session, kind: str, tag: str) -> None:
    """The same event three times in one message is one row and one count; the repeats are duplicates."""
    payload, _ = business_payload(kind, tag)
    before = scrape()
    result = ingest([payload, payload, dict(payload)], kind=kind, session_factory=committing_factory(db_session))
    after = scrape()

    assert result == IngestResult(stored=1, duplicates=2)
    assert stored_count(db_session, [payload["event_id"]]) == 1
    assert_counted(before, after, kind, tag, times=1)
    assert delta(before, after, "metrics_events_duplicate_total", kind=kind) == 2


def test_redelivered_batch_counts_only_its_new_events(db_session: Session, tag: str) -> None:
    """A message redelivered with one event already stored counts only the other one."""
    factory = committing_factory(db_session)
    first, _ = business_payload("panic_request", tag)
    second = sample_payload("panic_request", zone=tag)
    ingest([first], kind="panic_request", session_factory=factory)
    before = scrape()
    result = ingest([first, second], kind="panic_request", session_factory=factory)
    after = scrape()

    assert result == IngestResult(stored=1, duplicates=1)
    assert_counted(before, after, "panic_request", tag, times=1)
    assert delta(before, after, "metrics_events_duplicate_total", kind="panic_request") == 1


def test_nul_characters_in_a_rejected_payload_do_not_fail_the_message(db_session: Session, tag: str) -> None:
    """A NUL in a field name (quoted by the rejection's detail) or a value: the valid event is stored, the bad kept.

    Hypothesis found it: PostgreSQL text cannot hold NUL, so the rejection's
    row failed the whole transaction, valid events with it.
    """
    payload, _ = business_payload("panic_request", tag)
    message = [
        payload,
        sample_payload("panic_request", **{"\x00": None}),
        sample_payload("panic_request", zone="a\x00b"),
    ]
    result = ingest(message, kind="panic_request", session_factory=committing_factory(db_session))
    assert result == IngestResult(stored=1, rejected=2)
    details = (
        db_session.execute(
            select(RejectedEvent.detail).where(
                RejectedEvent.reason == "extra_forbidden", RejectedEvent.detail.contains("\\x00")
            )
        )
        .scalars()
        .all()
    )
    assert details


# --- nothing counted unless committed -----------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (RuntimeError("killed between insert and commit"), RuntimeError),
        (OperationalError("COMMIT", {}, Exception("server closed the connection")), DatabaseUnavailable),
    ],
    ids=["failure", "database_error"],
)
def test_counters_do_not_move_when_the_transaction_rolls_back(
    db_session: Session, tag: str, error: BaseException, raised: type[BaseException]
) -> None:
    """An insert whose transaction rolls back stores and counts nothing, not even the message's rejections."""
    payload, _ = business_payload("panic_request", tag)
    message = [payload, sample_payload("panic_request", **SURPLUS_FIELD)]
    rows, before = stored_count(db_session), scrape()

    with pytest.raises(raised):
        ingest(message, kind="panic_request", session_factory=failing_after_insert(db_session, error))

    after = scrape()
    assert stored_count(db_session) == rows
    assert_counted(before, after, "panic_request", tag, times=0)
    assert delta(before, after, "metrics_events_rejected_total", kind="panic_request", reason=SURPLUS_REASON) == 0
    assert delta(before, after, "metrics_events_duplicate_total", kind="panic_request") == 0

    # The retry stores and counts everything exactly once.
    result = ingest(message, kind="panic_request", session_factory=committing_factory(db_session))
    retried = scrape()
    assert result == IngestResult(stored=1, rejected=1)
    assert_counted(before, retried, "panic_request", tag, times=1)
    assert delta(before, retried, "metrics_events_rejected_total", kind="panic_request", reason=SURPLUS_REASON) == 1
    # The failed attempt's pending record was settled by this retry, not left
    # to the compactor until this process dies.
    assert not list(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).glob(f"pending-{os.getpid()}-*"))


def unreachable(engine: Engine, tmp_path: Path) -> Engine:
    """An engine like `engine` whose database cannot be reached."""
    if engine.dialect.name == "sqlite":
        return create_engine(f"sqlite:///{tmp_path / 'no-such-directory' / 'metrics.sqlite3'}")
    return create_engine(engine.url.set(host="127.0.0.1", port=1))


def test_unreachable_database_is_database_unavailable_and_counts_nothing(
    db_engine: Engine, tmp_path: Path, tag: str
) -> None:
    """A database that cannot be reached raises DatabaseUnavailable (a retry) and counts nothing."""
    engine = unreachable(db_engine, tmp_path)
    payload, _ = business_payload("auth", tag)
    before = scrape()
    try:
        with pytest.raises(DatabaseUnavailable):
            ingest(
                [payload, sample_payload("auth", **SURPLUS_FIELD)],
                kind="auth",
                session_factory=lambda: session_scope(engine),
            )
    finally:
        engine.dispose()
    after = scrape()
    assert_counted(before, after, "auth", tag, times=0)
    assert delta(before, after, "metrics_events_rejected_total", kind="auth", reason=SURPLUS_REASON) == 0


# --- a full metrics disk ------------------------------------------------------------------------


@pytest.fixture
def full_metrics_disk(tmp_path: Path, db_session: Session) -> Iterator[SmallTmpfs]:
    """A tmpfs filled to the last byte (the test frees it); tests point PROMETHEUS_MULTIPROC_DIR at it."""
    # An event first, so this process's metric files are open in the run's directory, which `scrape` reads.
    ingest([sample_payload("panic_request")], kind="panic_request", session_factory=committing_factory(db_session))
    with small_tmpfs(tmp_path / "metrics", size="2M") as disk:
        disk.fill()
        yield disk


def test_full_metric_files_store_nothing_and_the_retry_stores_and_counts_once(
    db_session: Session, tag: str, full_metrics_disk: SmallTmpfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no room for its counts a message is refused before anything is stored; once space returns it counts once."""
    payload, _ = business_payload("panic_request", tag)
    rows, before = stored_count(db_session), scrape()

    # The room is checked in the directory the variable names now.
    with monkeypatch.context() as env:
        env.setenv("PROMETHEUS_MULTIPROC_DIR", str(full_metrics_disk.path))
        with pytest.raises(MetricsUnwritable):
            ingest([payload], kind="panic_request", session_factory=committing_factory(db_session))
        assert stored_count(db_session) == rows
        full_metrics_disk.free()
        assert ingest([payload], kind="panic_request", session_factory=committing_factory(db_session)).stored == 1

    assert stored_count(db_session) == rows + 1
    assert_counted(before, scrape(), "panic_request", tag, times=1)


def test_a_pending_record_the_disk_refuses_rolls_the_message_back(
    db_session: Session, tag: str, full_metrics_disk: SmallTmpfs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills after the room check, before the pending record: nothing stored, no half record left."""
    payload, _ = business_payload("panic_request", tag)
    events, _ = validate([payload], kind="panic_request")
    rows, before = stored_count(db_session), scrape()
    attempt = Attempt()

    with monkeypatch.context() as env:
        env.setenv("PROMETHEUS_MULTIPROC_DIR", str(full_metrics_disk.path))
        with committing_factory(db_session)() as session:
            store_and_count(session, events=events, published_at=None, attempt=attempt)
            with pytest.raises(MetricsUnwritable):
                attempt.prepare()  # as `ingest` does, right before the COMMIT
            session.rollback()  # what the error does to `ingest`'s transaction

    assert stored_count(db_session) == rows
    assert_counted(before, scrape(), "panic_request", tag, times=0)
    assert list(full_metrics_disk.path.iterdir()) == [full_metrics_disk.path / "filler"]
