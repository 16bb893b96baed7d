"""Fork between units of work: a pool child never inherits another thread's half-done work.

The worker's main process forks pool children while its own threads (the
endpoint, the compactor, the consuming probe) are working. `fork()` copies
only the forking thread: whatever lock another thread held at that instant
stays held in the child for ever. Seen for real: the compactor thread was
importing psycopg (its first database call) when billiard forked, so the
child's first `import psycopg` waited on that module's import lock until the
task's time limit killed it. CPython resets its global import lock at fork
but not the per-module ones, nor SQLAlchemy's, kombu's or
prometheus_client's locks.

So each such thread wraps a unit of work in `unit()`, and a hook registered
with `os.register_at_fork` makes every fork wait until no unit is running
(new units wait while a fork is pending, so a busy endpoint cannot starve
it). The wait is bounded: a unit stuck longer than `FORK_WAIT_SECONDS` (a
hung connection) lets the fork go ahead, logged, rather than stop the pool
from replacing children.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

log = logging.getLogger(__name__)

FORK_WAIT_SECONDS = 10.0


class ForkGate:
    """Counts running units of work; a fork waits until there are none but the forking thread's own."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._running = 0
        self._forking = False
        self._local = threading.local()

    @contextmanager
    def unit(self, *, yield_to_fork: bool = True) -> Iterator[None]:
        """Run the block as one unit of work: no fork happens while it runs.

        With `yield_to_fork` a new unit first lets a pending fork go; an
        event loop passes False, as waiting there would stop the loop from
        finishing the very units the fork waits for.
        """
        depth = getattr(self._local, "depth", 0)
        with self._condition:
            # A nested unit never waits: its thread already holds one, and a
            # pending fork is waiting for that one to end.
            while yield_to_fork and self._forking and depth == 0:
                self._condition.wait()
            self._running += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            with self._condition:
                self._running -= 1
                self._condition.notify_all()

    @property
    def fork_pending(self) -> bool:
        """Whether a fork is waiting for units to end."""
        return self._forking

    @property
    def running(self) -> int:
        """Units of work running now, in every thread."""
        return self._running

    def before_fork(self) -> None:
        """Wait (bounded) until the only units running are the forking thread's own."""
        own = getattr(self._local, "depth", 0)
        deadline = time.monotonic() + FORK_WAIT_SECONDS
        self._condition.acquire()
        self._forking = True
        while self._running > own:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("forking while another thread is still working", extra={"units": self._running - own})
                break
            self._condition.wait(remaining)
        # Held across the fork, so no unit starts or ends half-way through it.

    def after_fork_in_parent(self) -> None:
        """Let the parent's threads start units again."""
        self._forking = False
        self._condition.notify_all()
        self._condition.release()

    def after_fork_in_child(self) -> None:
        """The child has only the forking thread: no other thread's unit exists there."""
        own = getattr(self._local, "depth", 0)
        self._condition = threading.Condition(threading.Lock())
        self._running = own
        self._forking = False


_gate = ForkGate()
os.register_at_fork(
    before=_gate.before_fork,
    after_in_parent=_gate.after_fork_in_parent,
    after_in_child=_gate.after_fork_in_child,
)


def unit(*, yield_to_fork: bool = True) -> AbstractContextManager[None]:
    """Run a block of a background thread's work as one unit: forks wait for it to end."""
    return _gate.unit(yield_to_fork=yield_to_fork)


class ForkSafeRequests:
    """ASGI middleware: each HTTP request is one unit of work, so no fork copies it half-done."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with _gate.unit(yield_to_fork=False):
            await self.app(scope, receive, send)


def running_units() -> int:
    """Units of work running now in this process (for tests and diagnostics)."""
    return _gate.running
