"""The lock that keeps scrapes and compactions of one directory apart."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "compaction.lock"

#: Lock descriptors this process holds. A child forked while one is held
#: (Celery forks its pool from the main process, where the sweeper runs)
#: would keep the flock alive as long as it lives; it closes its copies.
_held_lock_fds: set[int] = set()


def _close_inherited_lock_fds() -> None:
    for fd in _held_lock_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    _held_lock_fds.clear()


os.register_at_fork(after_in_child=_close_inherited_lock_fds)


@contextlib.contextmanager
def directory_lock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold the directory's lock: exclusive to change files, shared to read.

    ``flock`` locks belong to an open file description, so two threads of one
    process exclude each other as two processes do, and the kernel releases
    the lock of a process killed with SIGKILL. Not for NFS.
    """
    fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        _held_lock_fds.add(fd)
        yield
    finally:
        _held_lock_fds.discard(fd)
        os.close(fd)
