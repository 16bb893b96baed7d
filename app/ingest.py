"""Validate, persist, then count: the path of every event through the worker.

Knows nothing of Celery: tasks call `ingest` and turn `DatabaseUnavailable`
into a retry.

Counting is exact by a pending record (app.metrics.pending): every attempt
has a token written into the rows it inserts; before COMMIT the increments
the batch will make are computed as target values and written down; after
COMMIT they are applied and the record deleted. A record left behind (the
process died, the COMMIT was in doubt, a callback failed) is finished or
dropped by whoever can ask the database whether the token's rows are there:
this process at its next attempt, or the compactor once the process is dead.
"""

from __future__ import annotations

import logging
import os
import signal
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from app.db.session import on_commit, session_scope
from app.kinds import kind_of
from app.metrics import counting, pending
from app.metrics.labels import LabelCaps
from app.metrics.writers import room_for_counts
from app.store import attempt_committed, insert_new, insert_rejections, lock_attempt
from panic_metrics_client.events import Event
from panic_metrics_client.parsing import InvalidEvent, parse_any_event, parse_event

log = logging.getLogger(__name__)

SessionFactory = Callable[[], AbstractContextManager[Session]]

#: Told the name of each stage of an attempt as it ends (bench/ingest.py's
#: profile reads a clock there); nothing by default.
StageClock = Callable[[str], None]


def no_clock(_stage: str) -> None:
    """The default `StageClock`: stages are not timed."""


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached; the events are intact and may be retried."""


class MetricsUnwritable(RuntimeError):
    """This process's metric files cannot take the counts (a full disk): nothing was stored; retry once space returns.

    Stored once, counted once: an event is stored only where its count is sure
    to land, so a full disk sends the message back instead of leaving its
    count in the memory of a process that may exit before space returns.
    """


@dataclass(frozen=True)
class IngestResult:
    """What became of one message's payloads."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0


_caps: LabelCaps | None = None


def _label_caps() -> LabelCaps:
    global _caps  # noqa: PLW0603 - one cache of admitted label values per process
    if _caps is None:
        _caps = LabelCaps()
    return _caps


def reset_label_caps() -> None:
    """Forget this process's admitted label values (tests, settings changes)."""
    global _caps  # noqa: PLW0603 - see _label_caps
    _caps = None


Rejection = tuple[int, InvalidEvent, Any]  # (position in the message, why, the payload)

#: Test seams, inert unless set: SIGKILL this process right after a COMMIT
#: that stored an event whose id starts with the value; raise in the
#: counting callback for such an event instead.
KILL_AFTER_COMMIT_ENV = "PANIC_METRICS_TEST_KILL_AFTER_COMMIT"
RAISE_IN_COUNT_ENV = "PANIC_METRICS_TEST_RAISE_IN_COUNT"


def validate(payloads: Sequence[Any], *, kind: str | None) -> tuple[list[Event], list[InvalidEvent]]:
    """Split payloads into valid events and rejections; `kind=None` reads each payload's own kind."""
    events, rejections = _validate(payloads, kind=kind)
    return events, [invalid for _, invalid, _ in rejections]


def _validate(payloads: Sequence[Any], *, kind: str | None) -> tuple[list[Event], list[Rejection]]:
    events: list[Event] = []
    rejections: list[Rejection] = []
    for position, payload in enumerate(payloads):
        try:
            events.append(parse_any_event(payload) if kind is None else parse_event(kind, payload))
        except InvalidEvent as invalid:
            rejections.append((position, invalid, payload))
    return events, rejections


def _unique(events: Sequence[Event]) -> tuple[list[Event], list[Event]]:
    seen: set[Any] = set()
    unique: list[Event] = []
    repeated: list[Event] = []
    for event in events:
        (repeated if event.event_id in seen else unique).append(event)
        seen.add(event.event_id)
    return unique, repeated


class Attempt:
    """One try at storing one message: its token, its tally, its pending record."""

    def __init__(self, clock: StageClock = no_clock) -> None:
        self.clock = clock
        self.token = uuid.uuid4()
        self.tally = pending.Tally()
        self.targets: list[pending.Target] = []
        self.record: Path | None = None
        self.prepared = False
        self.expected_rows = 0
        self.new_event_ids: list[str] = []
        #: True once the COMMIT is known to have happened (callbacks ran).
        self.committed = False

    def prepare(self) -> None:
        """Compute the targets and write the record: the last step before COMMIT."""
        self.targets = self.tally.targets()
        self.clock("count")
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if self.targets and directory and pending.is_mmaped(self.targets):
            # Raised before the COMMIT, so the transaction rolls back: nothing stored, nothing to count.
            if not pending.backed(self.targets):
                raise MetricsUnwritable("a series of this message has no room in its metric file")
            try:
                self.record = pending.write(
                    Path(directory), token=self.token, expected_rows=self.expected_rows, targets=self.targets
                )
            except OSError as exc:
                raise MetricsUnwritable(f"pending counts not written: {exc}") from exc
        self.prepared = True
        self.clock("pending_file")

    def apply(self) -> None:
        """Land every entry on its target, then drop the record (after COMMIT)."""
        pending.apply(self.targets)
        self.clock("count")
        if self.record is not None:
            self.record.unlink(missing_ok=True)
        _unresolved.pop(self.token, None)
        self.clock("pending_file")

    def after_commit(self) -> None:
        """The counting callback: the COMMIT happened, count it (or leave it to be resolved)."""
        self.committed = True
        self.clock("commit")
        _unresolved[self.token] = self
        prefix = os.environ.get(KILL_AFTER_COMMIT_ENV)
        if prefix and any(event_id.startswith(prefix) for event_id in self.new_event_ids):
            os.kill(os.getpid(), signal.SIGKILL)
        prefix = os.environ.get(RAISE_IN_COUNT_ENV)
        if prefix and any(event_id.startswith(prefix) for event_id in self.new_event_ids):
            raise RuntimeError("counting callback failed (test hook)")
        self.apply()


#: Attempts of this process whose counts are not applied yet: a failed
#: callback (committed) or a COMMIT in doubt (unknown). Resolved at the start
#: of the next attempt, before any new target is computed from the entries.
_unresolved: dict[uuid.UUID, Attempt] = {}


def resolve_unresolved(session_factory: SessionFactory = session_scope) -> set[uuid.UUID]:
    """Finish or drop this process's attempts left pending; `DatabaseUnavailable` if it cannot ask.

    Returns the tokens of the attempts that committed (and are now counted).
    """
    counted = set()
    for attempt in list(_unresolved.values()):
        if not attempt.committed:
            try:
                with session_factory() as session:
                    attempt.committed = attempt_committed(session, attempt.token)
            except DBAPIError as exc:
                raise DatabaseUnavailable(f"cannot resolve pending counts: {exc.orig or exc}") from exc
        if attempt.committed:
            attempt.apply()
            counted.add(attempt.token)
        else:
            if attempt.record is not None:
                attempt.record.unlink(missing_ok=True)
            _unresolved.pop(attempt.token, None)
    return counted


def store_and_count(
    session: Session,
    *,
    events: Sequence[Event],
    published_at: datetime | None,
    rejections: Sequence[Rejection] = (),
    message_id: str | None = None,
    attempt: Attempt | None = None,
) -> IngestResult:
    """Store `events` and keep `rejections` in the session's transaction; count what is new once it commits."""
    attempt = attempt or Attempt()
    clock = attempt.clock
    session.connection()  # checked out here (and pinged) rather than inside the insert's round trip
    clock("connect")
    unique, repeated = _unique(events)
    if not unique:
        # insert_new takes the attempt's lock in its own statement; the rejections are inserted without it.
        lock_attempt(session, attempt.token)
    clock("lock")
    inserted = insert_new(session, unique, published_at=published_at, stored_by=attempt.token) if unique else set()
    new = [e for e in unique if e.event_id in inserted]
    duplicates = [e for e in unique if e.event_id not in inserted] + repeated
    clock("insert")
    kept = insert_rejections(session, rejections, message_id=message_id or str(uuid.uuid4()), stored_by=attempt.token)
    clock("rejections")
    kinds = [kind_of(event) for event in new]
    raw = [kind.raw_labels(event) for kind, event in zip(kinds, new, strict=True)]
    capped = counting.capped_labels(session, _label_caps(), raw)
    clock("labels")
    stored_at = counting.now()
    children = counting.Children()
    for event, kind, labels in zip(new, kinds, capped, strict=True):
        moves = kind.moves(event, labels)
        counting.count_stored(
            attempt.tally, event, moves, published_at=published_at, stored_at=stored_at, children=children
        )
    for event in duplicates:
        counting.count_duplicate(attempt.tally, event.kind)
        log.info("duplicate event", extra={"event_id": str(event.event_id), "kind": event.kind})
    for position, invalid, _payload in rejections:
        if position in kept:
            counting.count_rejected(attempt.tally, invalid)
            log.warning(
                "event rejected",
                extra={
                    "kind": invalid.kind,
                    "reason": invalid.reason,
                    "detail": invalid.detail,
                    "event_id": invalid.event_id,
                },
            )
    attempt.expected_rows = len(new) + len(kept)
    attempt.new_event_ids = [str(e.event_id) for e in new]
    on_commit(session, attempt.after_commit)
    clock("count")
    return IngestResult(stored=len(new), duplicates=len(duplicates), rejected=len(rejections))


def ingest(
    payloads: Sequence[Any],
    *,
    kind: str | None,
    published_at: datetime | None = None,
    message_id: str | None = None,
    session_factory: SessionFactory = session_scope,
    clock: StageClock = no_clock,
) -> IngestResult:
    """Validate payloads, store the valid ones once and keep the rejected ones, count what was new.

    `message_id` keys the kept rejections (message, position), so a
    redelivered message keeps and counts them once; without one, each call
    is its own message. An in-doubt COMMIT is settled here: if the attempt's
    rows are there it succeeded and is counted, not retried. Raises
    `MetricsUnwritable`, having stored nothing, while the metric files
    cannot take the counts. `clock` is told each stage's name as it ends.
    """
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and not room_for_counts(Path(directory)):
        raise MetricsUnwritable(f"no room for metric files in {directory}")
    clock("pending_file")
    resolve_unresolved(session_factory)
    clock("resolve")
    events, rejections = _validate(payloads, kind=kind)
    clock("validate")
    if not events and not rejections:
        return IngestResult()
    attempt = Attempt(clock)
    try:
        with session_factory() as session:
            result = store_and_count(
                session,
                events=events,
                published_at=published_at,
                rejections=rejections,
                message_id=message_id,
                attempt=attempt,
            )
            attempt.prepare()  # the context manager COMMITs right after this
        clock("close")
    except DBAPIError as exc:
        # Unreachable or dropped connections are worth a retry; any other
        # database error is a bug, and retrying it would only repeat it.
        retryable = isinstance(exc, OperationalError) or exc.connection_invalidated
        if attempt.prepared and not attempt.committed:
            # The error came from the COMMIT itself: it may have reached the
            # server. Ask once, on a fresh connection; if that fails too, the
            # next attempt (or the compactor) asks again.
            _unresolved[attempt.token] = attempt
            try:
                counted = resolve_unresolved(session_factory)
            except DatabaseUnavailable:
                counted = set()
            if attempt.token in counted:
                log.warning("commit was in doubt and had succeeded", extra={"token": str(attempt.token)})
                return result
        if not retryable:
            raise
        raise DatabaseUnavailable(str(exc.orig or exc)) from exc
    except Exception:
        # Anything else after the record was written (the soft time limit
        # raised inside the COMMIT, a bug) leaves the COMMIT's fate unknown
        # too: this process's next attempt asks, instead of leaving the
        # record to the compactor until the process dies.
        if attempt.prepared and not attempt.committed:
            _unresolved[attempt.token] = attempt
        raise
    return result
