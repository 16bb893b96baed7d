"""The event catalogue accepts what app code sends and rejects everything else with a bounded reason."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic_core.core_schema import ErrorType

from panic_metrics_client.events import EVENT_KINDS, Event
from panic_metrics_client.parsing import InvalidEvent, parse_any_event, parse_event
from tests.support.payloads import KINDS, malformed_payload, sample_payload, valid_payload

# Our own codes beside pydantic's error types: together a bounded label set.
CUSTOM_REASONS = {
    "unknown_kind",
    "kind_mismatch",
    "future_timestamp",
    "datetime_out_of_range",
    "raw_path",
    "empty_report",
    "bucket_total",
    "duration_sum",
    "interval",
}
KNOWN_REASONS = set(get_args(ErrorType)) | CUSTOM_REASONS
REASON = re.compile(r"[a-z][a-z0-9_]{0,39}")


def through_json(payload: Any) -> Any:
    """The payload as the worker receives it after the broker's JSON round trip."""
    return json.loads(json.dumps(payload))


def assert_rejected(invalid: InvalidEvent, kind: str) -> None:
    assert invalid.kind == kind
    assert REASON.fullmatch(invalid.reason), invalid.reason
    assert invalid.reason in KNOWN_REASONS, invalid.reason
    assert invalid.detail


def assert_field_kept(event: Event, name: str, sent: Any) -> None:
    got = getattr(event, name)
    if isinstance(got, datetime):
        assert got == datetime.fromisoformat(sent)
        assert got.utcoffset() == timedelta(0)
    elif isinstance(got, Decimal):
        assert abs(got - Decimal(str(sent))) <= Decimal("0.00005")
    elif isinstance(got, uuid.UUID):
        assert got == uuid.UUID(sent)
    elif isinstance(got, str):
        assert got == sent.strip()
    else:
        assert got == sent


def test_the_strategies_cover_every_kind_of_the_catalogue() -> None:
    """The payload strategies know exactly the catalogue's kinds."""
    assert set(KINDS) == set(EVENT_KINDS)


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_valid_payload_parses_and_round_trips(kind: str, data: st.DataObject) -> None:
    """A valid payload keeps every value it sent, and its JSON dump parses back to the same event."""
    payload = through_json(data.draw(valid_payload(kind)))
    event = parse_event(kind, payload)
    assert event.kind == kind
    for name, sent in payload.items():
        assert_field_kept(event, name, sent)
    assert parse_event(kind, through_json(event.model_dump(mode="json"))) == event


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_batch_path_parses_what_the_kind_path_parses(kind: str, data: st.DataObject) -> None:
    """A payload naming its own kind parses on the batch path to the same event as on its kind's path."""
    payload = through_json(data.draw(valid_payload(kind, with_kind=True)))
    payload.setdefault("event_id", str(uuid.uuid4()))
    payload.setdefault("occurred_at", "2025-01-01T00:00:00Z")
    assert parse_any_event(payload) == parse_event(kind, payload)


@pytest.mark.parametrize("kind", KINDS)
def test_event_id_is_made_when_absent(kind: str) -> None:
    """Two parses of a payload without event_id get two different random UUIDs."""
    payload = sample_payload(kind)
    del payload["event_id"]
    first, second = parse_event(kind, payload), parse_event(kind, payload)
    assert first.event_id != second.event_id
    assert first.event_id.version == 4


@pytest.mark.parametrize("kind", KINDS)
def test_event_id_is_kept_when_given(kind: str) -> None:
    """The event_id app code gave is the event's id."""
    event_id = uuid.uuid4()
    assert parse_event(kind, sample_payload(kind, event_id=str(event_id))).event_id == event_id


@pytest.mark.parametrize("kind", KINDS)
def test_occurred_at_is_now_in_utc_when_absent(kind: str) -> None:
    """Without occurred_at the event happened at parse time, timezone-aware, in UTC."""
    before = datetime.now(UTC)
    event = parse_event(kind, sample_payload(kind))
    assert before <= event.occurred_at <= datetime.now(UTC)
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_occurred_at_is_normalised_to_utc() -> None:
    """An occurred_at at +02:00 is the same instant in UTC."""
    event = parse_event("auth", sample_payload("auth", occurred_at="2025-06-01T12:00:00+02:00"))
    assert event.occurred_at == datetime(2025, 6, 1, 10, tzinfo=UTC)
    assert event.occurred_at.tzinfo == UTC


def test_expires_at_is_normalised_to_utc() -> None:
    """expires_at is stored in UTC too: SQLite would drop its offset and keep the wall time."""
    event = parse_event("subscription", sample_payload("subscription", expires_at="2031-01-01T00:00:00+02:00"))
    assert event.expires_at == datetime(2030, 12, 31, 22, tzinfo=UTC)
    assert event.expires_at is not None
    assert event.expires_at.tzinfo == UTC


def test_occurred_at_within_the_clock_skew_is_accepted() -> None:
    """A caller whose clock runs a few seconds fast is not refused."""
    soon = (datetime.now(UTC) + timedelta(seconds=10)).isoformat()
    assert parse_event("auth", sample_payload("auth", occurred_at=soon)).occurred_at > datetime.now(UTC)


def test_amount_is_rounded_to_the_stored_scale() -> None:
    """An amount keeps the four decimal places its column stores, whatever its exponent."""
    event = parse_event("subscription", sample_payload("subscription", amount="1e-20000"))
    assert event.amount == Decimal("0.0000")
    event = parse_event("credit_transaction", sample_payload("credit_transaction", amount="12.34565"))
    assert event.amount == Decimal("12.3457")


@pytest.mark.parametrize(
    ("kind", "fields", "reason"),
    [
        ("panic_request", {"zone": None}, "string_type"),
        ("panic_request", {"service_type": "police"}, "enum"),
        ("panic_request", {"response_time": "180.5"}, "float_type"),
        ("panic_request", {"response_time": float("nan")}, "finite_number"),
        ("panic_request", {"response_time": -1}, "greater_than_equal"),
        ("panic_request", {"response_time": 86_401}, "less_than_equal"),
        ("panic_request", {"zone": "z" * 129}, "string_too_long"),
        ("panic_request", {"zone": "down\x00town"}, "string_pattern_mismatch"),
        ("panic_request", {"occurred_at": "2025-01-01T10:00:00"}, "timezone_aware"),
        ("panic_request", {"occurred_at": "yesterday"}, "datetime_from_date_parsing"),
        ("panic_request", {"occurred_at": "2999-01-01T00:00:00Z"}, "future_timestamp"),
        ("panic_request", {"occurred_at": "0001-01-01T00:00:00+01:00"}, "datetime_out_of_range"),
        ("panic_request", {"kind": "auth"}, "kind_mismatch"),
        ("panic_request", {"firmId": "firm123"}, "extra_forbidden"),
        ("panic_request", {"event_id": "not-a-uuid"}, "uuid_parsing"),
        ("auth", {"success": 1}, "bool_type"),
        ("auth", {"user_type": "Registered User"}, "string_pattern_mismatch"),
        ("credit_transaction", {"credits": True}, "int_type"),
        ("credit_transaction", {"amount": "Infinity"}, "finite_number"),
        ("http_request", {"endpoint": "/api/v1/panic/12345"}, "raw_path"),
        ("http_request", {"endpoint": f"/api/v1/panic/{uuid.uuid4()}"}, "raw_path"),
        ("http_request", {"status": 600}, "less_than_equal"),
        ("gauge_report", {"websocket_connections": None, "cache_hits": 0, "cache_misses": 0}, "empty_report"),
    ],
)
def test_each_rule_rejects_with_its_own_reason(kind: str, fields: dict[str, Any], reason: str) -> None:
    """A payload breaking one rule is rejected with that rule's reason code."""
    with pytest.raises(InvalidEvent) as caught:
        parse_event(kind, sample_payload(kind, **fields))
    assert_rejected(caught.value, kind)
    assert caught.value.reason == reason


@pytest.mark.parametrize("kind", KINDS)
def test_missing_required_field_is_rejected_as_missing(kind: str) -> None:
    """Dropping any field without a default is reason `missing`."""
    payload = sample_payload(kind)
    required = [name for name, field in type(parse_event(kind, payload)).model_fields.items() if field.is_required()]
    for name in required:
        with pytest.raises(InvalidEvent) as caught:
            parse_event(kind, {k: v for k, v in payload.items() if k != name})
        assert caught.value.reason == "missing"


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_malformed_payload_is_rejected_with_a_reason(kind: str, data: st.DataObject) -> None:
    """Every malformed payload of a kind raises InvalidEvent naming that kind and a short reason code."""
    payload = data.draw(malformed_payload(kind))
    with pytest.raises(InvalidEvent) as caught:
        parse_event(kind, payload)
    assert_rejected(caught.value, kind)


@settings(max_examples=500, deadline=None)
@given(data=st.data())
def test_malformed_payload_is_rejected_on_the_batch_path(data: st.DataObject) -> None:
    """On the batch path a malformed payload is rejected under its kind, or as unknown_kind when it names none."""
    kind = data.draw(st.sampled_from(KINDS))
    payload = data.draw(malformed_payload(kind, with_kind=True))
    with pytest.raises(InvalidEvent) as caught:
        parse_any_event(payload)
    names_its_kind = isinstance(payload, dict) and payload.get("kind") == kind
    assert_rejected(caught.value, kind if names_its_kind else "unknown")
    assert (caught.value.reason == "unknown_kind") is not names_its_kind


@settings(max_examples=200, deadline=None)
@given(
    payload=st.sampled_from(KINDS).flatmap(valid_payload),
    kind=st.one_of(st.none(), st.text(max_size=20), st.integers(), st.sampled_from([k.upper() for k in KINDS])),
)
def test_unknown_or_missing_kind_is_rejected_as_unknown_kind(payload: dict[str, Any], kind: Any) -> None:
    """A batch payload whose kind is missing or not in the catalogue is unknown_kind."""
    assume(kind not in EVENT_KINDS)
    if kind is not None:
        payload = {**payload, "kind": kind}
    with pytest.raises(InvalidEvent) as caught:
        parse_any_event(payload)
    assert (caught.value.kind, caught.value.reason) == ("unknown", "unknown_kind")


@pytest.mark.parametrize("kind", ["", "unknown", "panic", "PANIC_REQUEST"])
def test_unknown_kind_is_rejected_on_the_kind_path(kind: str) -> None:
    """Asking for a kind the catalogue lacks is unknown_kind, whatever the payload."""
    with pytest.raises(InvalidEvent) as caught:
        parse_event(kind, sample_payload("panic_request"))
    assert (caught.value.kind, caught.value.reason) == ("unknown", "unknown_kind")


def test_rejection_keeps_a_bounded_event_id() -> None:
    """The rejected payload's event_id is kept for the log line, cut to 64 characters."""
    with pytest.raises(InvalidEvent) as caught:
        parse_event("auth", sample_payload("auth", event_id="x" * 10_000))
    assert caught.value.event_id == "x" * 64
