"""What keeps compaction safe: the directory lock and the per-process leases.

The lock keeps scrapes and merges of one directory apart. The leases decide
whose files may be merged, wherever the writers run: every process that may
write metric files holds ``lease-<pid>.lock`` in the directory with an
exclusive ``flock`` for its whole life (taken when app.metrics is imported,
and again in every forked child). The kernel drops the flock when the
process dies, SIGKILL included, and flock works across pid namespaces on one
host, so a compactor in another container proves a writer dead by taking its
lease, never by looking its pid up in a namespace that may not be its own.
A pid with files but no lease has no provable owner, and is never merged.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = "compaction.lock"
LEASE_PREFIX = "lease-"
LEASE_SUFFIX = ".lock"

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


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="utf-8").strip()
    except OSError:
        return None


def lease_path(path: Path, pid: int) -> Path:
    """The lease file of one writer."""
    return path / f"{LEASE_PREFIX}{pid}{LEASE_SUFFIX}"


def leased_pids(path: Path) -> set[int]:
    """Pids that have a lease file here (alive or not)."""
    pids = set()
    for lease in path.glob(f"{LEASE_PREFIX}*{LEASE_SUFFIX}"):
        pid = lease.name[len(LEASE_PREFIX) : -len(LEASE_SUFFIX)]
        if pid.isdigit():
            pids.add(int(pid))
    return pids


def _open_locked(lease: Path, *, blocking: bool, create: bool = True) -> int | None:
    """Open and flock ``lease``; the fd, or None if another process holds it.

    A compactor unlinks the lease of a dead process while holding its lock;
    whoever was waiting on that inode must not keep a lock on a file nobody
    else can find, so the inode is checked after locking and the open retried.
    """
    while True:
        try:
            fd = os.open(lease, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o644)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == lease.stat().st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


_lease: tuple[Path, int] | None = None


def take_lease(path: Path) -> None:
    """Hold this process's lease in ``path`` until it exits (idempotent per process)."""
    global _lease  # noqa: PLW0603 - one lease per process
    if _lease is not None and _lease[0] == path:
        return
    path.mkdir(parents=True, exist_ok=True)
    lease = lease_path(path, os.getpid())
    fd = _open_locked(lease, blocking=True)
    assert fd is not None  # noqa: S101 - a blocking flock returns only once held
    # For operators reading the directory; the flock alone decides liveness.
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "pid_namespace": pid_namespace(), "boot_id": _boot_id()}).encode())
    _lease = (path, fd)


def _lease_after_fork() -> None:
    # The inherited descriptor shares the parent's lock; closing our copy
    # leaves the parent's lease held. The child then takes its own.
    global _lease  # noqa: PLW0603 - see take_lease
    if _lease is None:
        return
    path, fd = _lease
    _lease = None
    with contextlib.suppress(OSError):
        os.close(fd)
    take_lease(path)


os.register_at_fork(after_in_child=_lease_after_fork)


def try_dead_lease(path: Path, pid: int) -> int | None:
    """Prove ``pid`` dead by taking its lease: the locked fd (hold it while merging), or None.

    None means alive, or no lease at all (no provable owner). While the
    caller holds the fd, a new process that reuses the pid waits in
    ``take_lease`` before it can write a file.
    """
    fd = _open_locked(lease_path(path, pid), blocking=False, create=False)
    if fd is not None:
        _held_lock_fds.add(fd)  # a child forked meanwhile must not keep the dead lease locked
    return fd


def release_dead_lease(path: Path, pid: int, fd: int, *, remove: bool) -> None:
    """Let go of a dead process's lease, removing the file once its files are merged."""
    if remove:
        lease_path(path, pid).unlink(missing_ok=True)
    _held_lock_fds.discard(fd)
    os.close(fd)
