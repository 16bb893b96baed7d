"""A payload becomes an event of the catalogue, or an `InvalidEvent` with a short, bounded reason.

Both sides parse with it: the client at the call site, the worker again on
every payload it receives. The reason is pydantic's error type (`missing`,
`enum`, `extra_forbidden`, ...) or one of ours (`unknown_kind`,
`kind_mismatch`); it becomes a label value, so it is never free text.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from panic_metrics_client.events import EVENT_MODELS, AnyEvent, Event

# A field name comes from the caller: cap it so a huge key cannot make a huge log line.
MAX_DETAIL_FIELD = 80

_ANY_EVENT: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


class InvalidEvent(ValueError):
    """A payload that is not a valid event; `reason` is a short, bounded code."""

    def __init__(self, kind: str, reason: str, detail: str, event_id: str | None, field: str | None = None) -> None:
        super().__init__(f"{kind}: {reason}: {detail}")
        self.kind = kind
        self.reason = reason
        self.detail = detail
        self.event_id = event_id
        # The field the first error is about ("payload" when it is about the whole event).
        self.field = field


def _known_kind(payload: Any) -> str:
    kind = payload.get("kind") if isinstance(payload, dict) else None
    return kind if isinstance(kind, str) and kind in EVENT_MODELS else "unknown"


def _event_id_of(payload: Any) -> str | None:
    value = payload.get("event_id") if isinstance(payload, dict) else None
    return value[:64] if isinstance(value, str) else None


def _invalid(kind: str, payload: Any, exc: ValidationError) -> InvalidEvent:
    first = exc.errors(include_url=False, include_input=False)[0]
    loc = first["loc"][1:] if first["loc"][:1] == (kind,) else first["loc"]
    where = (".".join(str(part) for part in loc) or "payload")[:MAX_DETAIL_FIELD]
    return InvalidEvent(kind, first["type"], f"{where}: {first['msg']}", _event_id_of(payload), where)


def parse_event(kind: str, payload: Any) -> Event:
    """Validate one payload of a known kind; raise InvalidEvent with a reason when it is bad."""
    model = EVENT_MODELS.get(kind)
    if model is None:
        raise InvalidEvent("unknown", "unknown_kind", f"no event kind {kind!r}", _event_id_of(payload))
    if isinstance(payload, dict) and payload.get("kind", kind) != kind:
        raise InvalidEvent(kind, "kind_mismatch", f"payload kind is not {kind!r}", _event_id_of(payload))
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise _invalid(kind, payload, exc) from None


def parse_any_event(payload: Any) -> Event:
    """Validate one payload that names its own kind (the batch path)."""
    kind = _known_kind(payload)
    if kind == "unknown":
        raise InvalidEvent("unknown", "unknown_kind", "payload has no known 'kind'", _event_id_of(payload))
    try:
        return _ANY_EVENT.validate_python(payload)
    except ValidationError as exc:
        raise _invalid(kind, payload, exc) from None
