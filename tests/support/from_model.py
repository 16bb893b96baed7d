"""Valid events of any catalogue model, drawn from the model's own JSON schema.

tests/support/payloads.py states each kind's rules a second time, by hand, to
check the catalogue against them. This one reads them from the model, so a
kind added to the catalogue is drawn at once, without a line here: it is what
the walk through every place of a kind (tests/unit/test_kinds.py) uses.
Values are realistic but arbitrary: any float in range, any text the pattern
allows (no surrogates), timestamps at any offset up to a day ago.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import reject
from hypothesis import strategies as st
from pydantic import ValidationError

from panic_metrics_client.events import HTTP_DURATION_BUCKETS, Event

# Text JSON can carry and PostgreSQL can store: no surrogates; control
# characters only where a pattern allows them.
_TEXT = st.characters(codec="utf-8", exclude_categories=("Cs",))
_OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
_Y2K = datetime(2000, 1, 1)  # noqa: DTZ001 - hypothesis takes naive bounds and adds the timezone itself


def _timestamps() -> st.SearchStrategy[str]:
    latest = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
    return st.datetimes(min_value=_Y2K, max_value=latest, timezones=_OFFSETS).map(datetime.isoformat)


def _from_schema(schema: dict[str, Any], defs: dict[str, Any]) -> st.SearchStrategy[Any]:  # noqa: PLR0911 - a return per form
    """A strategy for the subset of JSON schema pydantic writes for the catalogue's fields."""
    if "$ref" in schema:
        return _from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        # A bare string beside a number is pydantic's Decimal-as-text: the number stands for both.
        options = [s for s in schema["anyOf"] if s != {"type": "string"}]
        return st.one_of([_from_schema(option, defs) for option in options])
    kind = schema.get("type")
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum"), schema.get("maximum"))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "array":
        items = _from_schema(schema["items"], defs)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=schema.get("maxItems", 5))
    if kind == "string":
        if schema.get("format") == "uuid":
            return st.uuids().map(str)
        if schema.get("format") == "date-time":
            return _timestamps()
        low, high = schema.get("minLength", 0), schema.get("maxLength", 200)
        text = st.from_regex(schema["pattern"], fullmatch=True, alphabet=_TEXT) if "pattern" in schema else st.text()
        return text.filter(lambda value: low <= len(value) <= high)
    raise NotImplementedError(f"no strategy for the schema {schema}: extend tests/support/from_model.py")


def payloads(model: type[Event]) -> st.SearchStrategy[dict[str, Any]]:
    """JSON payloads of `model` (without `kind`): required fields always, the others sometimes."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    fields = {name: _from_schema(field, defs) for name, field in schema["properties"].items() if name != "kind"}
    required = set(schema.get("required", ()))
    return st.fixed_dictionaries(
        {name: strategy for name, strategy in fields.items() if name in required},
        optional={name: strategy for name, strategy in fields.items() if name not in required},
    )


def _summary_made_consistent(payload: dict[str, Any]) -> dict[str, Any]:
    """An http_summary's fields agree with each other (a validator's rule the schema cannot say): the
    buckets' total is the count, the sum lies in the buckets' ranges, the interval ends when it occurred."""
    buckets = [n % 1000 for n in payload["buckets"]]
    buckets[0] = buckets[0] or (0 if sum(buckets) else 1)
    tops = (*HTTP_DURATION_BUCKETS, 60.0)  # past the last bound: a minute
    payload |= {
        "buckets": buckets,
        "count": sum(buckets),
        "duration_sum": [math.fsum(n * top for n, top in zip(buckets, tops, strict=True))],
        "interval_start": payload.get("occurred_at", payload["interval_start"]),
    }
    return payload


#: Kinds whose fields must agree in ways a JSON schema cannot say, made to agree after the draw.
_CONSISTENT = {"http_summary": _summary_made_consistent}


@st.composite
def events(draw: st.DrawFn, model: type[Event]) -> Event:
    """A valid event of `model`; payloads that a rule the schema cannot say (a validator) refuses are dropped."""
    payload = draw(payloads(model))
    consistent = _CONSISTENT.get(str(model.model_fields["kind"].default))
    if consistent is not None:
        payload = consistent(payload)
    try:
        return model.model_validate(payload)
    except ValidationError:
        reject()
