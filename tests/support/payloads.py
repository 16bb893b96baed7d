"""Hypothesis strategies for event payloads exactly as app code sends them through JSON.

`valid_payload(kind)` draws payloads the catalogue must accept; `malformed_payload(kind)`
starts from a valid one and applies one or more mutations, each of which alone makes
the payload invalid (a wrong type, a missing field, a value out of its range, ...).
The rules are written out here, independently of panic_metrics_client.events, so the tests check the
catalogue against a second statement of it.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

KINDS = (
    "panic_request",
    "auth",
    "notification",
    "subscription",
    "credit_transaction",
    "prank_detection",
    "http_request",
    "http_summary",
    "gauge_report",
)

SERVICE_TYPES = ("security", "medical", "fire")
PANIC_STATUSES = ("requested", "accepted", "en_route", "arrived", "completed", "cancelled", "prank")
CHANNELS = ("push", "sms", "email", "in_app")
NOTIFICATION_STATUSES = ("sent", "delivered", "failed")
SUBSCRIPTION_ACTIONS = ("purchased", "renewed", "cancelled", "expired")
CREDIT_TYPES = ("purchase", "spend", "refund", "adjustment")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

MAX_IDENTIFIER = 128
MAX_LABEL_NAME = 64
MAX_ENDPOINT = 200
MAX_SECONDS = 86_400
MAX_COUNT = 1_000_000_000
MAX_MONEY = 1_000_000_000

_LABEL_NAME = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
_CURRENCY = re.compile(r"[A-Z]{3}")

# --- building blocks ------------------------------------------------------------

# Letters and digits are never whitespace nor control characters, so a string of
# them keeps its length through pydantic's strip.
_WORD_CHARS = st.characters(categories=("L", "N"))
# Up to 20 letters: never a number, a timestamp, a UUID (32+ characters) or a finite decimal.
_words = st.text(st.characters(categories=("L",)), min_size=1, max_size=20)
_containers = st.one_of(
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=3)), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)
_non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
# Explicit bounds, not `.filter(lambda x: x < 0)`: hypothesis 6.170 rewrites that
# filter into bounds and still draws 0.0 and -0.0.
_negative_floats = st.floats(max_value=-math.ulp(0.0), allow_infinity=False)
_numeric_strings = st.one_of(st.integers().map(str), st.floats(allow_nan=False, allow_infinity=False).map(str))
_not_a_string = st.one_of(st.integers(), st.floats(), st.booleans(), _containers)


def _longer_than(limit: int) -> st.SearchStrategy[str]:
    """Strings of letters and digits longer than `limit`, up to 100,000 characters."""
    return st.tuples(st.text(_WORD_CHARS, min_size=1, max_size=4), st.integers(limit + 1, 100_000)).map(
        lambda pair: (pair[0] * pair[1])[: pair[1]]
    )


def _with_inside(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A word with `inner` in its middle, where no strip can remove it."""
    word = st.text(_WORD_CHARS, min_size=1, max_size=10)
    return st.tuples(word, inner, word).map("".join)


_control_chars = st.one_of(st.characters(min_codepoint=0, max_codepoint=0x1F), st.just("\x7f"))
_surrogates = st.characters(categories=("Cs",))


@dataclass(frozen=True)
class FieldRule:
    """How one payload field may and may not look."""

    valid: st.SearchStrategy[Any]
    invalid: st.SearchStrategy[Any]
    required: bool = True  # absent is invalid
    nullable: bool = False  # None is valid


def _rule(
    valid: st.SearchStrategy[Any],
    invalid: st.SearchStrategy[Any],
    *,
    required: bool = True,
    nullable: bool = False,
) -> FieldRule:
    # None is a wrong type for every field that is not nullable.
    return FieldRule(valid, invalid if nullable else st.one_of(invalid, st.none()), required, nullable)


def _enum(values: tuple[str, ...]) -> FieldRule:
    unknown = st.one_of(
        st.text(max_size=30),
        st.sampled_from(values).map(str.swapcase),
        st.sampled_from(values).map(lambda v: f" {v}"),
        _longer_than(30),
    ).filter(lambda v: v not in values)
    return _rule(st.sampled_from(values), st.one_of(unknown, _not_a_string))


_identifier_text = st.text(
    st.characters(categories=("L", "N"), include_characters="-_.:@/ "), min_size=1, max_size=MAX_IDENTIFIER
).map(str.strip)
_identifier = st.one_of(
    st.sampled_from(["downtown", "harbour", "firm123", "north-side", "Cape Town CBD"]),
    _identifier_text.filter(bool),
    # pydantic strips surrounding spaces before the length check
    st.tuples(_identifier_text.filter(bool), st.sampled_from([" ", "  "])).map(lambda p: p[1] + p[0] + p[1]),
)
_bad_identifier = st.one_of(
    st.sampled_from(["", " ", "   ", "\t", "\n"]),
    _longer_than(MAX_IDENTIFIER),
    _with_inside(_control_chars),
    _with_inside(_surrogates),
    _not_a_string,
)


def _identifier_rule(*, required: bool = True, nullable: bool = False) -> FieldRule:
    return _rule(_identifier, _bad_identifier, required=required, nullable=nullable)


def _label_name_rule(*, required: bool = True) -> FieldRule:
    valid = st.one_of(
        st.sampled_from(["registered_user", "guest", "panic-alert", "gold", "web", "velocity"]),
        st.from_regex(_LABEL_NAME, fullmatch=True),
    )
    bad = st.one_of(
        st.text(max_size=80).filter(lambda s: not _LABEL_NAME.fullmatch(s)),
        st.sampled_from(["", "Registered_User", "1st", "_x", "-x", "a b", "a.b", "gold\n"]),
        _longer_than(MAX_LABEL_NAME),
        _not_a_string,
    )
    return _rule(valid, bad, required=required)


def _currency_rule() -> FieldRule:
    valid = st.one_of(st.sampled_from(["ZAR", "USD", "EUR"]), st.from_regex(_CURRENCY, fullmatch=True))
    bad = st.one_of(
        st.text(max_size=6).filter(lambda s: not _CURRENCY.fullmatch(s)),
        _longer_than(3),
        _not_a_string,
    )
    return _rule(valid, bad, required=False, nullable=True)


def _seconds_rule(*, required: bool = True, nullable: bool = False) -> FieldRule:
    valid = st.one_of(st.floats(0, MAX_SECONDS), st.integers(0, MAX_SECONDS))
    bad = st.one_of(
        _negative_floats,  # negative times
        st.integers(max_value=-1),
        st.floats(min_value=MAX_SECONDS, exclude_min=True, allow_infinity=False),  # more than a day
        st.integers(min_value=MAX_SECONDS + 1),
        _non_finite,
        _numeric_strings,  # numbers are strict: "180.5" is refused
        _words,
        st.booleans(),
        _containers,
    )
    return _rule(valid, bad, required=required, nullable=nullable)


def _count_rule(*, required: bool = True, nullable: bool = False) -> FieldRule:
    bad = st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=MAX_COUNT + 1),
        st.floats(),  # even 5.0: counts are strict integers
        _numeric_strings,
        _words,
        st.booleans(),
        _containers,
    )
    return _rule(st.integers(0, MAX_COUNT), bad, required=required, nullable=nullable)


def _money_rule() -> FieldRule:
    valid = st.one_of(
        st.decimals(0, MAX_MONEY, places=2).map(str),
        st.decimals(0, MAX_MONEY, allow_nan=False, allow_infinity=False).map(str),
        st.integers(0, MAX_MONEY),
        st.floats(0, MAX_MONEY),
    )
    some_decimal = st.decimals(min_value=0, allow_nan=False, allow_infinity=False)
    bad = st.one_of(
        some_decimal.map(lambda d: str(-(d + Decimal("1e-30")))),  # negative, down to -1e-30
        _negative_floats,
        st.integers(max_value=-1),
        some_decimal.map(lambda d: str(d + MAX_MONEY + Decimal("1e-4"))),  # past a billion
        st.floats(min_value=MAX_MONEY, exclude_min=True),
        st.integers(min_value=MAX_MONEY + 1),
        _non_finite,
        st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "inf", "sNaN", "0x10", "12,50", "R12.50", ""]),
        _words,
        st.booleans(),
        _containers,
    )
    return _rule(valid, bad, required=False, nullable=True)


def _bool_rule(*, required: bool = True) -> FieldRule:
    bad = st.one_of(
        st.integers(),  # 0 and 1 included: booleans are strict
        st.floats(),
        st.sampled_from(["true", "false", "1", "0", "yes"]),
        _containers,
    )
    return _rule(st.booleans(), bad, required=required)


_offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
# A day back so that no offset can put a valid occurred_at in the future.
_PAST = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)


def _iso(moment: datetime) -> str:
    text = moment.isoformat()
    return text.replace("+00:00", "Z") if text.endswith("+00:00") else text


_Y2K = datetime(2000, 1, 1)  # noqa: DTZ001 - hypothesis takes naive bounds and adds the timezone itself
_past_timestamps = st.datetimes(min_value=_Y2K, max_value=_PAST, timezones=_offsets).map(_iso)
_naive_timestamps = st.one_of(
    st.datetimes(min_value=_Y2K, max_value=_PAST).map(datetime.isoformat),
    st.dates(min_value=_Y2K.date()).map(lambda d: d.isoformat()),
)
_not_iso = st.one_of(
    st.sampled_from(
        [
            "",
            "now",
            "yesterday",
            "24/11/2025 10:00",
            "Nov 24 2025 10:00:00 +0200",
            "2025-13-01T00:00:00Z",
            "2025-02-30T00:00:00Z",
            "2025-01-01T25:00:00Z",
            "2025-01-01T00:00:00+25:00",
        ]
    ),
    _words,
)
# Year 1 at a positive offset is a valid ISO string with no UTC equivalent.
_before_year_one_in_utc = st.integers(1, 14 * 60).map(
    lambda minutes: _iso(datetime(1, 1, 1, tzinfo=timezone(timedelta(minutes=minutes))))
)
_bad_timestamp_types = st.one_of(
    st.booleans(),
    _containers,
    _non_finite,
    st.floats(min_value=1e16, allow_infinity=False),  # past year 9999 even as milliseconds
)


@st.composite
def _future_timestamps(draw: st.DrawFn) -> str:
    """An occurred_at at least an hour beyond now: far past any allowed clock skew."""
    ahead = draw(st.timedeltas(min_value=timedelta(hours=1), max_value=timedelta(days=3650)))
    return _iso((datetime.now(UTC) + ahead).astimezone(draw(_offsets)))


def _occurred_at_rule() -> FieldRule:
    bad = st.one_of(_naive_timestamps, _not_iso, _future_timestamps(), _before_year_one_in_utc, _bad_timestamp_types)
    return _rule(_past_timestamps, bad, required=False)


def _expires_at_rule() -> FieldRule:
    bad = st.one_of(_naive_timestamps, _not_iso, _before_year_one_in_utc, _bad_timestamp_types)
    return _rule(_past_timestamps, bad, required=False, nullable=True)


def _event_id_rule() -> FieldRule:
    uuids = st.uuids().map(str)
    bad = st.one_of(
        st.sampled_from(["", "not-a-uuid", "1234"]),
        uuids.map(lambda u: u[:-1]),
        uuids.map(lambda u: u + "0"),
        _words,
        st.integers(),
        st.floats(),
        st.booleans(),
        _containers,
    )
    return _rule(uuids, bad, required=False)


# Route templates: segments start with a letter and are at most 16 characters,
# so none is a number or a UUID; ten of them stay under 200 characters.
_segment = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_\-]{0,15}", fullmatch=True),
    st.from_regex(r"[a-z_]{1,12}", fullmatch=True).map(lambda name: "{" + name + "}"),
)
_templates = st.one_of(
    st.sampled_from(["/", "/api/v1/panic", "/api/v1/panic/{request_id}", "/users/{user_id}/credits"]),
    st.lists(_segment, min_size=1, max_size=10).map(lambda parts: "/" + "/".join(parts)),
)
_raw_segment = st.one_of(
    st.integers(0, 10**12).map(str),
    st.uuids().map(str),
    st.uuids().map(lambda u: u.hex),
    st.uuids().map(lambda u: str(u).upper()),
)


def _endpoint_rule() -> FieldRule:
    bad = st.one_of(
        st.tuples(_templates, _raw_segment).map(lambda p: p[0].rstrip("/") + "/" + p[1]),  # the raw path
        _templates.map(lambda t: t.lstrip("/")),  # no leading slash
        st.tuples(_templates, st.sampled_from(["?page=2", "#top", " x", "\t", "/a b"])).map("".join),
        st.tuples(_templates, _control_chars).map("".join),
        _longer_than(MAX_ENDPOINT).map(lambda s: "/" + s),
        _not_a_string,
    )
    return _rule(_templates, bad)


def _status_rule() -> FieldRule:
    bad = st.one_of(
        st.integers(max_value=99),
        st.integers(min_value=600),
        st.floats(),
        _numeric_strings,
        st.booleans(),
        _containers,
    )
    return _rule(st.integers(100, 599), bad)


_COMMON = {"event_id": _event_id_rule(), "occurred_at": _occurred_at_rule()}

# An http_summary's bucket bounds (the worker's http_request_duration_seconds), and one more past the last.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SUMMARY_DURATIONS = ("count", "buckets", "duration_sum")


def _summary_count_rule() -> FieldRule:
    # Any count alone is refused where the buckets do not add up to it; these are refused whatever the buckets.
    bad = st.one_of(st.just(0), st.integers(max_value=-1), st.integers(min_value=MAX_COUNT + 1), st.floats(), _words)
    return _rule(st.integers(1, MAX_COUNT), bad)


def _buckets_rule() -> FieldRule:
    size = len(HTTP_BUCKETS) + 1
    bad = st.one_of(
        st.lists(st.integers(0, 5), max_size=size - 1),  # too few
        st.lists(st.integers(0, 5), min_size=size + 1, max_size=size + 5),  # too many
        st.lists(st.integers(0, 5), min_size=size, max_size=size).flatmap(
            lambda counts: st.integers(0, size - 1).map(lambda i: [*counts[:i], -1, *counts[i + 1 :]])
        ),
        st.lists(st.floats(0, 5), min_size=size, max_size=size),  # floats, not integers
        _words,
        st.integers(),
    )
    return _rule(st.lists(st.integers(0, 5), min_size=size, max_size=size), bad)


def _duration_sum_rule() -> FieldRule:
    bad = st.one_of(
        st.just([]),
        st.lists(_non_finite, min_size=1, max_size=3),
        st.lists(_numeric_strings, min_size=1, max_size=3),
        st.lists(st.floats(-1e6, -1.0), min_size=1, max_size=1),  # a negative total
        st.floats(0, 10),  # a number, not a list of partials
        _words,
    )
    return _rule(st.lists(st.floats(0, 10), min_size=1, max_size=3), bad)


def _interval_start_rule() -> FieldRule:
    bad = st.one_of(_naive_timestamps, _not_iso, _future_timestamps(), _before_year_one_in_utc, _bad_timestamp_types)
    return _rule(_past_timestamps, bad)


RULES: Mapping[str, Mapping[str, FieldRule]] = {
    "panic_request": {
        **_COMMON,
        "service_type": _enum(SERVICE_TYPES),
        "status": _enum(PANIC_STATUSES),
        "zone": _identifier_rule(),
        "firm_id": _identifier_rule(required=False, nullable=True),
        "response_time": _seconds_rule(required=False, nullable=True),
    },
    "auth": {
        **_COMMON,
        "user_type": _label_name_rule(),
        "success": _bool_rule(),
        "account_locked": _bool_rule(required=False),
    },
    "notification": {
        **_COMMON,
        "channel": _enum(CHANNELS),
        "status": _enum(NOTIFICATION_STATUSES),
        "notification_type": _label_name_rule(),
    },
    "subscription": {
        **_COMMON,
        "subscription_id": _identifier_rule(),
        "plan": _label_name_rule(),
        "action": _enum(SUBSCRIPTION_ACTIONS),
        "amount": _money_rule(),
        "currency": _currency_rule(),
        "expires_at": _expires_at_rule(),
    },
    "credit_transaction": {
        **_COMMON,
        "customer_id": _identifier_rule(),
        "type": _enum(CREDIT_TYPES),
        "credits": _count_rule(),
        "amount": _money_rule(),
    },
    "prank_detection": {
        **_COMMON,
        "request_id": _identifier_rule(),
        "zone": _identifier_rule(),
        "firm_id": _identifier_rule(required=False, nullable=True),
        "detector": _label_name_rule(),
    },
    "http_request": {
        **_COMMON,
        "method": _enum(HTTP_METHODS),
        "endpoint": _endpoint_rule(),
        "status": _status_rule(),
        "duration": _seconds_rule(),
    },
    "http_summary": {
        **_COMMON,
        "method": _enum(HTTP_METHODS),
        "endpoint": _endpoint_rule(),
        "status": _status_rule(),
        "interval_start": _interval_start_rule(),
        "count": _summary_count_rule(),
        "buckets": _buckets_rule(),
        "duration_sum": _duration_sum_rule(),
    },
    "gauge_report": {
        **_COMMON,
        "source": _label_name_rule(required=False),
        "websocket_connections": _count_rule(required=False, nullable=True),
        "cache_hits": _count_rule(required=False),
        "cache_misses": _count_rule(required=False),
    },
}

# A gauge report must carry at least one of these.
_GAUGE_VALUES = ("websocket_connections", "cache_hits", "cache_misses")

# --- valid payloads ---------------------------------------------------------------------


@st.composite
def _valid(draw: st.DrawFn, kind: str, with_kind: bool) -> dict[str, Any]:
    payload: dict[str, Any] = {"kind": kind} if with_kind else {}
    for name, rule in RULES[kind].items():
        if rule.required or draw(st.booleans()):
            payload[name] = draw(st.none()) if rule.nullable and draw(st.integers(0, 4)) == 0 else draw(rule.valid)
    if kind == "gauge_report":
        reported = draw(st.sampled_from(_GAUGE_VALUES))
        minimum = 0 if reported == "websocket_connections" else 1
        payload[reported] = draw(st.integers(minimum, MAX_COUNT))
    if kind == "http_summary":
        payload.update(draw(_summary_of_requests()))
        # The client always says when the interval ended (occurred_at); it started at or before.
        payload.setdefault("occurred_at", draw(_past_timestamps))
        payload["interval_start"] = _iso(datetime.fromisoformat(payload["occurred_at"]) - timedelta(seconds=10))
    return payload


@st.composite
def _summary_of_requests(draw: st.DrawFn) -> dict[str, Any]:
    """The count, buckets and exact sum of some requests' durations, as a process would sum them."""
    durations = draw(st.lists(st.floats(0, MAX_SECONDS), min_size=1, max_size=20))
    buckets = [0] * (len(HTTP_BUCKETS) + 1)
    for duration in durations:
        buckets[next((i for i, bound in enumerate(HTTP_BUCKETS) if duration <= bound), len(HTTP_BUCKETS))] += 1
    return {"count": len(durations), "buckets": buckets, "duration_sum": [math.fsum(durations)]}


def valid_payload(kind: str, *, with_kind: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """A payload of `kind` as app code sends it (JSON types only); with `kind` in it for the batch path."""
    return _valid(kind, with_kind)


# --- malformed payloads -------------------------------------------------------------------

Mutation = tuple[str, ...]


def _mutations(kind: str) -> list[Mutation]:
    rules = RULES[kind]
    found: list[Mutation] = [("wrong", name) for name in rules]
    found += [("drop", name) for name, rule in rules.items() if rule.required]
    found += [("extra",), ("kind",), ("not_a_dict",)]
    if kind == "gauge_report":
        found.append(("empty_report",))
    return found


def _claims(mutation: Mutation) -> set[str]:
    """The fields a mutation rewrites; two mutations of one payload claim different fields."""
    match mutation:
        case ("wrong" | "drop", name):
            return {name}
        case ("empty_report",):
            return set(_GAUGE_VALUES)
        case _:
            return {mutation[0]}


def _other_kinds(kind: str, with_kind: bool) -> st.SearchStrategy[Any]:
    """A `kind` value that is wrong: another known kind (single-kind path) or no known kind (batch path)."""
    junk = st.one_of(_words, st.integers(), st.none(), _containers).filter(lambda v: v not in KINDS)
    if with_kind:
        return junk
    return st.one_of(st.sampled_from([k for k in KINDS if k != kind]), junk)


_EXTRA_NAMES = st.one_of(
    st.sampled_from(["zone_id", "firmId", "responseTime", "user", "__proto__", "Kind", " zone"]),
    st.text(min_size=1, max_size=30),
)
_any_json = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20), _containers)


def _mutate(draw: st.DrawFn, payload: dict[str, Any], mutation: Mutation, kind: str, with_kind: bool) -> None:
    """Apply one mutation to `payload` in place."""
    match mutation:
        case ("wrong", name):
            payload[name] = draw(RULES[kind][name].invalid)
        case ("drop", name):
            payload.pop(name, None)
        case ("extra",):
            names = _EXTRA_NAMES.filter(lambda n: n not in RULES[kind] and n != "kind")
            payload[draw(names)] = draw(_any_json)
        case ("kind",):
            if with_kind and draw(st.booleans()):
                del payload["kind"]
            else:
                payload["kind"] = draw(_other_kinds(kind, with_kind))
        case ("empty_report",):
            for name in _GAUGE_VALUES:
                payload.pop(name, None)
                if name != "websocket_connections" and draw(st.booleans()):
                    payload[name] = 0


@st.composite
def _malformed(draw: st.DrawFn, kind: str, with_kind: bool) -> Any:
    payload = draw(_valid(kind, with_kind))
    applied: list[Mutation] = []
    claimed: set[str] = set()
    for mutation in draw(st.lists(st.sampled_from(_mutations(kind)), min_size=1, max_size=3)):
        if not _claims(mutation) & claimed:
            applied.append(mutation)
            claimed |= _claims(mutation)
    if ("not_a_dict",) in applied:
        return draw(
            st.one_of(
                st.none(),
                st.booleans(),
                st.integers(),
                st.floats(),
                st.text(max_size=20),
                st.just([payload]),
                st.just(list(payload.items())),
            )
        )
    for mutation in applied:
        _mutate(draw, payload, mutation, kind, with_kind)
    return payload


def malformed_payload(kind: str, *, with_kind: bool = False) -> st.SearchStrategy[Any]:
    """A payload of `kind` made invalid by one or more mutations, each invalid on its own."""
    return _malformed(kind, with_kind)


# --- fixed examples ------------------------------------------------------------------------

_SAMPLES: Mapping[str, Callable[[], dict[str, Any]]] = {
    "panic_request": lambda: {
        "service_type": "security",
        "status": "accepted",
        "firm_id": "firm123",
        "zone": "downtown",
        "response_time": 180.5,
    },
    "auth": lambda: {"user_type": "registered_user", "success": False, "account_locked": True},
    "notification": lambda: {"channel": "sms", "status": "delivered", "notification_type": "panic_update"},
    "subscription": lambda: {
        "subscription_id": "sub-42",
        "plan": "gold",
        "action": "purchased",
        "amount": "199.99",
        "currency": "ZAR",
        "expires_at": "2031-01-01T00:00:00+02:00",
    },
    "credit_transaction": lambda: {"customer_id": "cust-7", "type": "purchase", "credits": 50, "amount": 99.5},
    "prank_detection": lambda: {"request_id": "req-9", "zone": "harbour", "detector": "velocity"},
    "http_request": lambda: {
        "method": "GET",
        "endpoint": "/api/v1/panic/{request_id}",
        "status": 200,
        "duration": 0.042,
    },
    "http_summary": lambda: {
        "method": "GET",
        "endpoint": "/api/v1/panic/{request_id}",
        "status": 200,
        "interval_start": (datetime.now(UTC) - timedelta(seconds=10)).isoformat(),
        "count": 3,
        "buckets": [0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0],
        "duration_sum": [0.007 + 0.042 + 0.8],
    },
    "gauge_report": lambda: {"source": "web", "websocket_connections": 12, "cache_hits": 30, "cache_misses": 4},
}


def sample_payload(kind: str, /, **fields: Any) -> dict[str, Any]:
    """A fixed, realistic valid payload of `kind` with a fresh event_id; `fields` override or add."""
    return {"event_id": str(uuid.uuid4()), **_SAMPLES[kind](), **fields}
