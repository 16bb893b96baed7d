"""The prefork pool, made to survive a SIGKILLed child on a transport without an event loop.

On Redis, Celery runs billiard's AsynPool: one pipe per child, no lock shared
between children. On a transport without an event loop (the embedded
filesystem broker) it runs billiard's blocking `Pool`, whose children share
one job pipe guarded by a `multiprocessing.Lock` (a POSIX semaphore). An idle
child waits for its next job *inside* that lock (`SimpleQueue.get_payload`:
`with self._rlock: recv_bytes()`), so killing an idle child (an OOM kill, an
operator's `kill -9`) leaves the semaphore taken forever: every new child
blocks on it and never runs a task while the main process keeps reserving
messages, and at shutdown `Pool._help_stuff_finish` blocks on the same lock,
so the worker never exits. A child killed while writing its result leaves the
result pipe's lock taken the same way.

The fix keeps billiard's pool and swaps those two locks for POSIX record
locks (`fcntl.lockf`) on a temporary file: the kernel releases a record lock
when its holder dies, however it dies. It also turns off put-locks, whose
slots leaked with killed children until the consumer blocked in
`apply_async` for good.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from typing import Any

from billiard.pool import Pool as BillardPool
from celery.concurrency.prefork import TaskPool as PreforkTaskPool

_POLL_SECONDS = 0.01


class ProcessDeathSafeLock:
    """A lock between processes that the kernel releases when its holder dies.

    Held per process (record locks are not shared across fork), so it
    serialises processes, not threads: in the pool only children read the job
    pipe and write the result pipe, one thread each; the main process takes it
    only at shutdown.
    """

    def __init__(self) -> None:
        # An unnamed temporary file: the descriptor keeps it, nothing to clean up.
        with tempfile.TemporaryFile(prefix="panic-metrics-pool-lock-") as handle:
            self._fd = os.dup(handle.fileno())

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; with `block=False` or a timeout, return whether it was taken."""
        if block and timeout is None:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
            return True
        deadline = time.monotonic() + (timeout or 0.0)
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                if not block or time.monotonic() >= deadline:
                    return False
                time.sleep(_POLL_SECONDS)

    def release(self) -> None:
        """Let the next process in."""
        fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_: object) -> None:
        self.release()


class BlockingPool(BillardPool):
    """billiard's blocking pool with locks a dead child cannot leave taken."""

    _inqueue: Any
    _outqueue: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # With put-locks the consumer blocks in apply_async until a slot is
        # free, and slots leak when children are killed (seen: the main thread
        # stuck in `_putlock.acquire()` after a few kill rounds, children idle).
        # Without them the broker's prefetch limit bounds the reserved messages.
        kwargs["putlocks"] = False
        super().__init__(*args, **kwargs)

    def _setup_queues(self) -> None:
        super()._setup_queues()  # type: ignore[misc]
        # Children read jobs under the job pipe's read lock and write results
        # under the result pipe's write lock; the main process writes jobs and
        # reads results from one thread each, so the other two locks stay.
        self._inqueue._rlock = ProcessDeathSafeLock()
        self._outqueue._wlock = ProcessDeathSafeLock()


class TaskPool(PreforkTaskPool):
    """Celery's prefork pool (`worker_pool`), with the blocking pool above."""

    BlockingPool: Any = BlockingPool

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Celery asks for put-locks only with the blocking pool (on Redis's
        # AsynPool they are off already); see BlockingPool.__init__.
        kwargs["putlocks"] = False
        super().__init__(*args, **kwargs)
