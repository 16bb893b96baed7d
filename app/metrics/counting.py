"""Turn stored events into metric increments, recorded in a `Tally`.

The tally is filled inside the transaction that stores the events, for the
events that were new, and applied only once that transaction committed (see
app.metrics.pending), so a counter's increase equals the rows inserted.
Which metrics an event moves is its kind's declaration (app.kinds); this
module applies them, whatever the kind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.orm import Session

from app.metrics import definitions as m
from app.metrics.labels import LabelCaps
from app.metrics.pending import Tally
from panic_metrics_client.events import EVENT_KINDS, CreditTransactionType, Event
from panic_metrics_client.parsing import InvalidEvent

Labels = Mapping[str, str]


class Observations(NamedTuple):
    """Many observations of a histogram at once, as a summary carries them.

    `buckets`: how many fell in each bucket (non-cumulative, one per bound and
    one past the last); `exact_sum`: the exact sum of their values as
    non-overlapping partials (panic_metrics_client.exact_sum).
    """

    buckets: Sequence[int]
    exact_sum: Sequence[float]


class Move(NamedTuple):
    """One metric an event moves: its labels, and by how much (None: this event does not move it).

    A counter is incremented by `amount`, a histogram observes it (or takes
    many `Observations` at once), a gauge is set to it.
    """

    metric: Counter | Histogram | Gauge
    labels: Labels
    amount: float | Observations | None = 1.0


class Children:
    """The child of each series met while counting one message, looked up once.

    prometheus_client's `labels()` checks and sorts the label names and
    converts every value on each call; a message of a hundred events asks for
    the same few series hundreds of times. Kept per message, not per process,
    so it never holds a child the registry has since dropped.
    """

    def __init__(self) -> None:
        self._found: dict[tuple[Any, ...], Any] = {}

    def __call__(self, metric: Counter | Histogram | Gauge, labels: Labels) -> Any:
        """`metric.labels(**labels)`, from the cache after the first time."""
        key = (metric, *labels.items())
        child = self._found.get(key)
        if child is None:
            child = self._found[key] = metric.labels(**labels)
        return child


def capped_labels(session: Session, caps: LabelCaps, raw: Sequence[Labels]) -> list[dict[str, str]]:
    """Each event's free-text label values (dimension -> value) capped, new ones admitted in sorted order."""
    capped = caps.cap_all(session, (item for labels in raw for item in labels.items()))
    return [{dimension: capped[dimension, value] for dimension, value in labels.items()} for labels in raw]


def count_stored(
    tally: Tally,
    event: Event,
    moves: Sequence[Move],
    *,
    published_at: datetime | None,
    stored_at: datetime,
    children: Children | None = None,
) -> None:
    """Tally one newly stored event: stored, its lag, and the `moves` its kind declares (app.kinds).

    `children`: the message's cache of series (one per message when counting many events).
    """
    child_of = children or Children()
    kind = event.kind
    tally.inc(child_of(m.EVENTS_STORED, {"kind": kind}))
    lag = max(0.0, (stored_at - event.occurred_at).total_seconds())
    tally.observe(child_of(m.EVENT_LAG, {"kind": kind, "since": "occurred"}), lag)
    if published_at is not None:
        lag = max(0.0, (stored_at - published_at).total_seconds())
        tally.observe(child_of(m.EVENT_LAG, {"kind": kind, "since": "published"}), lag)
    for metric, labels, amount in moves:
        if amount is None:
            continue
        child = child_of(metric, labels)
        if isinstance(amount, Observations):
            tally.observe_many(child, amount.buckets, amount.exact_sum)
        elif isinstance(metric, Counter):
            tally.inc(child, amount)
        elif isinstance(metric, Histogram):
            tally.observe(child, amount)
        else:
            tally.set(child, amount)


def count_duplicate(tally: Tally, kind: str) -> None:
    """Tally a redelivered event that was already stored."""
    tally.inc(m.EVENTS_DUPLICATE.labels(kind=kind))


def count_rejected(tally: Tally, invalid: InvalidEvent) -> None:
    """Tally a payload that failed validation, newly stored in rejected_events."""
    tally.inc(m.EVENTS_REJECTED.labels(kind=invalid.kind, reason=invalid.reason))


def initialise_fixed_series() -> None:
    """Create, at 0, every series whose label values are all from a closed set.

    Called once in the process that serves the endpoint, so a scrape shows
    them before their first event and `increase()` over that first event
    reads 1, not 0. Series with a free-text label (zone, user type, plan,
    ...) cannot be listed in advance and still appear on first use.
    """
    for kind in EVENT_KINDS:
        m.EVENTS_STORED.labels(kind=kind)
        m.EVENTS_DUPLICATE.labels(kind=kind)
        m.EVENTS_DEAD_LETTERED.labels(kind=kind)
    m.EVENTS_DEAD_LETTERED.labels(kind="batch")
    for credit_type in CreditTransactionType:
        m.CREDIT_TRANSACTIONS.labels(type=credit_type)
        m.CREDITS.labels(type=credit_type)
    for result in ("hit", "miss"):
        m.CACHE_REQUESTS.labels(result=result)
    for reason in m.SET_ASIDE_REASONS:
        m.MULTIPROC_FILES_SET_ASIDE.labels(reason=reason)


def now() -> datetime:
    """The current time, timezone-aware (a seam for tests)."""
    return datetime.now(UTC)
