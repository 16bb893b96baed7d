"""What keeps compaction safe: the directory lock and the liveness check.

The lock keeps scrapes and merges of one directory apart. The liveness check
decides whose files may be merged, and it is only meaningful in the pid
namespace of the processes that write the files: a standalone endpoint in
another container sharing the directory would see every worker child as
dead. So the worker's start records its namespace in the directory, and the
default check refuses to call anyone dead from elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "compaction.lock"
OWNER_NAME = "compaction.owner"

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


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks, sends none).

    A zombie counts as alive until reaped; a reused pid makes a dead process
    look alive, which only delays its merge until the new process dies too.
    """
    if pid <= 0:
        return False  # kill(0, ...) would address our own process group
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def pid_namespace() -> str | None:
    """This process's pid namespace, e.g. ``pid:[4026531836]``; None off Linux."""
    try:
        return str(Path("/proc/self/ns/pid").readlink())
    except OSError:
        return None


def claim_directory(path: Path) -> None:
    """Record that pids in this directory mean processes of our namespace.

    The caller holds the exclusive lock. Written to a temporary name and
    renamed, so a crash leaves the old record or the new one.
    """
    namespace = pid_namespace()
    if namespace is None:
        return
    tmp = path / (OWNER_NAME + ".tmp")
    tmp.write_text(namespace, encoding="utf-8")
    tmp.replace(path / OWNER_NAME)


def pids_are_ours(path: Path) -> bool:
    """Whether ``pid_alive`` can judge the pids in this directory from here."""
    try:
        owner = (path / OWNER_NAME).read_text(encoding="utf-8")
    except FileNotFoundError:
        return True  # nobody claimed it: a directory used by one namespace only
    namespace = pid_namespace()
    return namespace is None or owner == namespace
