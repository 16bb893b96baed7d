"""Label caps: free-text label values (zones, firms, endpoints, ...) are admitted
up to a per-dimension cap; past it they are recorded as `other`.

The admitted set lives in the `label_values` table so every process and host
agrees on it; each process keeps what it learned in memory, so a known value
is a dictionary lookup and the database is asked once per new value, inside
the transaction that stores the event.

The cap is exact under any concurrency. A value not yet admitted is admitted
under a transaction-scoped lock of its dimension (PostgreSQL's
`pg_advisory_xact_lock`), held until COMMIT: the count that decides is taken
after the lock, so it sees every admission committed before, and no other
admission of that dimension can commit until this transaction ends. On
SQLite the transaction already holds the database's one write lock (ingest
writes the events first), which serialises admissions the same way.

The lock is taken only for a value the database does not hold yet while
the dimension has room: a value admitted by another process is read without
it, and once a dimension is full (it never shrinks) the process loads its
admitted values and answers every later value from memory, so a flood of
new values past the cap costs neither a lock nor a query.

A transaction admits its new values in one sorted order (`cap_all`): the
dimension locks, and the row of each admitted value, are then taken in one
order by every transaction, so two of them never wait for each other in a
cycle (PostgreSQL would abort one as a deadlock). Ingest takes them after
inserting its events, so a transaction waiting on another's event row (a
redelivery racing its first delivery) holds no dimension lock yet. Ingest's
other lock, the attempt's own (app.store.lock_attempt, taken by the event
insert itself), is unique to the attempt and waited for only by a resolver
that holds no other lock.
"""

from __future__ import annotations

import zlib
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
        # Dimensions known full: `_admitted` then holds every admitted value.
        self._full: set[str] = set()

    def cap(self, session: Session, dimension: str, value: str) -> str:
        """`value` if it is admitted under the dimension's cap, else `other`."""
        if value in self._admitted[dimension]:
            return value
        if dimension in self._full:
            return OTHER
        found_full = _full_in_transaction(session).get(dimension)
        if found_full is not None:
            return value if value in found_full else OTHER
        admitted = _admit(session, dimension, value, _CAPS[dimension](self._settings))
        # Remembered only once the transaction commits: a decision read from
        # its own uncommitted admissions would be this process's alone.
        on_commit(session, lambda: self._admitted[dimension].add(value) if admitted else None)
        if not admitted:  # the dimension is full: learn all it holds, once
            values = _full_in_transaction(session)[dimension] = _values(session, dimension)
            on_commit(session, lambda: self._remember_full(dimension, values))
        return value if admitted else OTHER

    def cap_all(self, session: Session, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """Each (dimension, value) mapped to its capped value, new ones admitted in sorted order."""
        return {(dimension, value): self.cap(session, dimension, value) for dimension, value in sorted(set(wanted))}

    def _remember_full(self, dimension: str, values: set[str]) -> None:
        self._admitted[dimension] |= values
        self._full.add(dimension)


def _full_in_transaction(session: Session) -> dict[str, set[str]]:
    """The dimensions this transaction found full, with their values (until it commits, the process does not know)."""
    # The innermost transaction: what a rolled-back savepoint found is forgotten with it.
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:  # none has begun, so none found anything
        return {}
    found = session.info.get("label_caps_full")
    if found is None or found[0] is not transaction:
        found = session.info["label_caps_full"] = (transaction, {})
    full: dict[str, set[str]] = found[1]
    return full


def _values(session: Session, dimension: str) -> set[str]:
    return set(session.execute(select(LabelValue.value).where(LabelValue.dimension == dimension)).scalars())


def _admit(session: Session, dimension: str, value: str, cap: int) -> bool:
    """Whether `value` is admitted, admitting it if its dimension has room; the lock only when it must."""
    count, known = session.execute(
        select(
            select(func.count()).where(LabelValue.dimension == dimension).scalar_subquery(),
            select(LabelValue.value).where(LabelValue.dimension == dimension, LabelValue.value == value).exists(),
        )
    ).one()
    if known:
        return True
    if count >= cap:  # full, and a dimension never shrinks: no lock needed to refuse
        return False
    lock_dimension(session, dimension)
    # Counted again under the lock, by a new statement: under READ COMMITTED it
    # sees every admission committed before the lock was granted.
    room = select(func.count()).select_from(LabelValue).where(LabelValue.dimension == dimension).scalar_subquery() < cap
    source = select(literal(dimension), literal(value)).where(room)
    admit = insert_for(session, LabelValue).from_select(["dimension", "value"], source)
    session.execute(admit.on_conflict_do_nothing())
    found = session.execute(
        select(LabelValue.value).where(LabelValue.dimension == dimension, LabelValue.value == value)
    ).first()
    return found is not None


# The two-key form of advisory locks is a key space apart from the one-key
# form the ingest attempts use (app.store), so the two never collide.
_LOCK_CLASS = zlib.crc32(b"label_values") & 0x7FFFFFFF


def lock_dimension(session: Session, dimension: str) -> None:
    """Hold `dimension`'s admission lock until this transaction ends (PostgreSQL; SQLite's write lock is enough)."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(dimension.encode()) & 0x7FFFFFFF
        session.execute(select(func.pg_advisory_xact_lock(_LOCK_CLASS, key)))
