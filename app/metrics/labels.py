"""Label caps: free-text label values (zones, firms, endpoints, ...) are admitted
up to a per-dimension cap; past it they are recorded as `other`.

The admitted set lives in the `label_values` table so every process and host
agrees on it; each process keeps what it learned in memory, so the database is
asked once per new value, inside the transaction that stores the event.
Concurrent first sightings may overshoot a cap by the number of concurrent
writers, never more.

A transaction admits its new values in one sorted order (`cap_all`): each
admission holds the value's row lock until COMMIT, so two workers admitting
overlapping values in opposite orders would each wait for the other, and
PostgreSQL would abort one of them as a deadlock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlalchemy import func, literal, select
from sqlalchemy.orm import Session

from app.config import Settings, get_settings
from app.db.models import LabelValue
from app.db.session import on_commit
from app.db.upsert import insert_for

OTHER = "other"

# dimension -> the setting that caps it
_CAPS: dict[str, Callable[[Settings], int]] = {
    "zone": lambda s: s.max_zones,
    "firm": lambda s: s.max_firms,
    "endpoint": lambda s: s.max_endpoints,
    "notification_type": lambda s: s.max_notification_types,
    "plan": lambda s: s.max_plans,
    "user_type": lambda s: s.max_small_dimension,
    "detector": lambda s: s.max_small_dimension,
    "source": lambda s: s.max_small_dimension,
}
DIMENSIONS = tuple(_CAPS)


class LabelCaps:
    """Maps raw label values to capped ones, remembering decisions per process."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings or get_settings()
        self._admitted: dict[str, set[str]] = {d: set() for d in _CAPS}
        self._refused: dict[str, set[str]] = {d: set() for d in _CAPS}

    def cap(self, session: Session, dimension: str, value: str) -> str:
        """`value` if it is admitted under the dimension's cap, else `other`."""
        if value in self._admitted[dimension]:
            return value
        if value in self._refused[dimension]:
            return OTHER
        admitted = _admit(session, dimension, value, _CAPS[dimension](self._settings))
        # Remembered only once the admission is committed: a value remembered
        # from a rolled-back transaction would be this process's alone.
        on_commit(session, lambda: self._remember(dimension, value, admitted=admitted))
        return value if admitted else OTHER

    def cap_all(self, session: Session, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Each (dimension, value) mapped to its capped value, new ones admitted in sorted order."""
        return {(dimension, value): self.cap(session, dimension, value) for dimension, value in sorted(set(wanted))}

    def _remember(self, dimension: str, value: str, *, admitted: bool) -> None:
        # A refusal is remembered only up to the cap's size so a flood of
        # unique values cannot grow this process's memory without bound.
        if admitted:
            self._admitted[dimension].add(value)
        elif len(self._refused[dimension]) < _CAPS[dimension](self._settings):
            self._refused[dimension].add(value)


def _admit(session: Session, dimension: str, value: str, cap: int) -> bool:
    room = select(func.count()).select_from(LabelValue).where(LabelValue.dimension == dimension).scalar_subquery() < cap
    source = select(literal(dimension), literal(value)).where(room)
    admit = insert_for(session, LabelValue).from_select(["dimension", "value"], source)
    session.execute(admit.on_conflict_do_nothing())
    found = session.execute(
        select(LabelValue.value).where(LabelValue.dimension == dimension, LabelValue.value == value)
    ).first()
    return found is not None
