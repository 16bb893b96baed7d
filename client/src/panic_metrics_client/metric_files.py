"""Multiprocess metric files that cannot kill the process: space is reserved before a page is used.

prometheus_client keeps each process's values in files it maps into memory
(``mmap_dict.MmapedDict``). It makes and grows a file with ``truncate``, which
leaves it sparse, then writes into the mapping: on a full filesystem the
first write into a page the filesystem cannot back is a SIGBUS, and the
process dies (a web process on its first metric, exit 135).

Here the same files, in the library's own format, get their blocks from
``posix_fallocate`` before the mapping reaches them: when the file is made,
and before each growth. A full filesystem is then an ``OSError`` at that
point, and the value class below handles it: the value is kept in memory,
the failure is logged once and counted (`status`), and the next write after
space returns writes every value that waited. A metric call never raises
and never kills the process.

The value class is selected the way prometheus_client selects its own, by
``prometheus_client.values.ValueClass``: `install` swaps it when this module
is imported by the client (before any metric of the client exists), and the
worker's processes take it from `value_class` (app.metrics.writers).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import values
from prometheus_client.mmap_dict import MmapedDict, mmap_key

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client.mmap_dict._INITIAL_MMAP_SIZE: the size the library gives a new file.
INITIAL_FILE_SIZE = 1 << 16

logger = logging.getLogger("panic_metrics_client")


class MetricFileFull(OSError):
    """No space could be reserved for a metric file (full filesystem, quota): its values wait in memory."""


def _reserve(fd: int, size: int, filename: str) -> None:
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        reason = f"cannot reserve {size} bytes: {exc.strerror}"
        raise MetricFileFull(exc.errno or errno.ENOSPC, reason, filename) from exc


class ReservedMmapedDict(MmapedDict):
    """The library's MmapedDict, whose every page has its blocks before the mapping touches it."""

    def __init__(self, filename: str, read_mode: bool = False) -> None:
        if not read_mode:
            fd = os.open(filename, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                size = os.fstat(fd).st_size
                try:
                    # Also fills the holes of a sparse file left by the library's own class.
                    _reserve(fd, max(size, INITIAL_FILE_SIZE), filename)
                except MetricFileFull:
                    if size == 0:
                        Path(filename).unlink()  # an empty file is not one a scrape can read
                    raise
            finally:
                os.close(fd)
        super().__init__(filename, read_mode)  # type: ignore[no-untyped-call]  # the library's is untyped

    def _init_value(self, key: str) -> None:
        # The library's own arithmetic: a 4-byte length, the key padded to 8 bytes, two doubles.
        encoded = len(key.encode("utf-8"))
        needed = self._used + 4 + encoded + (8 - (encoded + 4) % 8) + 16
        capacity = self._capacity
        while needed > capacity:
            capacity *= 2
        if capacity > self._capacity:
            # posix_fallocate extends the file; the library's truncate to the same size is then a no-op.
            _reserve(self._f.fileno(), capacity, self._fname)
        super()._init_value(key)  # type: ignore[no-untyped-call]


@dataclass
class Status:
    """What this process's metric files could not take: counted in memory, as the files may be full."""

    failed_writes: int = 0
    last_error: str | None = None
    waiting: int = 0

    @property
    def writable(self) -> bool:
        """True when no value waits in memory for space."""
        return self.waiting == 0


_status = Status()


def status() -> Status:
    """This process's metric-file status (writes that failed, values waiting for space)."""
    return Status(_status.failed_writes, _status.last_error, _status.waiting)


def reserved_value_class(process_identifier: Callable[[], int] = os.getpid) -> type:
    """A prometheus_client value class like ``values.MultiProcessValue``, on files with reserved space.

    Same files, names and format as the library's, so its collector, its
    ``mark_process_dead`` and our compaction read them unchanged; a fork
    starts the child's values from its own files, as the library does.
    """
    files: dict[str, Any] = {}  # ReservedMmapedDict, whose inherited methods are untyped
    made: list[Any] = []
    waiting: dict[Any, None] = {}  # values not yet in their file, in the order they failed
    pid = {"value": process_identifier()}
    lock = threading.Lock()

    def close_files() -> None:
        for file in files.values():
            file.close()
        files.clear()

    def cleanup() -> None:
        close_files()
        made.clear()
        waiting.clear()

    # How the library's own class is closed (values.close_all_multiprocess_files).
    values._multi_process_cleanups.append(cleanup)

    def check_for_pid_change() -> None:
        actual = process_identifier()
        if pid["value"] != actual:
            pid["value"] = actual
            # A fork: the child's values start from its own files, as in the library.
            close_files()
            waiting.clear()
            _status.waiting = 0
            for value in made:
                value._reset()

    def write_waiting() -> bool:
        # Oldest failure first; stop at the first that still fails.
        for value in list(waiting):
            if not value._written():
                return False
        if _status.waiting:
            _status.waiting = 0
            logger.info("panic_metrics_client: metric files writable again, the values that waited are written")
        return True

    def failed(exc: OSError) -> None:
        _status.failed_writes += 1
        _status.last_error = str(exc)
        if not _status.waiting:
            logger.warning(
                "panic_metrics_client: metric files are full, values wait in memory until space returns",
                extra={"error": str(exc)},
            )
        _status.waiting = len(waiting)

    class ReservedValue:
        """A float in this process's memory, written to its mmaped file whenever the file has room."""

        _multiprocess = True
        _reserved = True

        def __init__(  # noqa: PLR0917 - the library calls a value class with these, positionally
            self,
            typ: str,
            metric_name: str,
            name: str,
            labelnames: Any,
            labelvalues: Any,
            help_text: str,
            multiprocess_mode: str = "",
            **_kwargs: Any,
        ) -> None:
            self._prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
            self._key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
            with lock:
                self._check_for_pid_change()
                self._reset()
                made.append(self)

        def _reset(self) -> None:
            self._value, self._timestamp = 0.0, 0.0
            self._file: Any = None
            try:
                self._file = self._open()
                self._value, self._timestamp = self._file.read_value(self._key)
            except OSError as exc:
                self._file = None
                waiting[self] = None
                failed(exc)

        def _open(self) -> Any:
            file = files.get(self._prefix)
            if file is None:
                directory = os.environ[MULTIPROC_DIR_VARIABLE]
                file = ReservedMmapedDict(str(Path(directory) / f"{self._prefix}_{pid['value']}.db"))
                files[self._prefix] = file
            return file

        def _check_for_pid_change(self) -> None:
            check_for_pid_change()

        def _write(self) -> None:
            if self._written():
                write_waiting()

        def _written(self) -> bool:
            try:
                if self._file is None:
                    self._file = self._open()
                self._file.write_value(self._key, self._value, self._timestamp)
            except OSError as exc:
                waiting[self] = None
                failed(exc)
                return False
            waiting.pop(self, None)
            return True

        def inc(self, amount: float) -> None:
            with lock:
                self._check_for_pid_change()
                self._value += amount
                self._timestamp = 0.0
                self._write()

        def set(self, value: float, timestamp: float | None = None) -> None:
            with lock:
                self._check_for_pid_change()
                self._value = value
                self._timestamp = timestamp or 0.0
                self._write()

        def set_exemplar(self, _exemplar: Any) -> None:
            return  # as the library's multiprocess values: no exemplars

        def get(self) -> float:
            with lock:
                self._check_for_pid_change()
                return self._value

        def get_exemplar(self) -> None:
            return None

        @classmethod
        def close_all_files(cls) -> None:
            with lock:
                cleanup()

        @classmethod
        def write_waiting(cls) -> bool:
            """Write every value that waits for space now; True when none waits any more."""
            with lock:
                check_for_pid_change()
                return write_waiting()

    return ReservedValue


def write_waiting() -> bool:
    """Write now what this process's values hold in memory for want of space; True when nothing waits.

    A process that must not go on while its counts cannot reach their files
    (the worker's pool child, before it stores an event) asks here rather than
    waiting for its next metric write to retry them.
    """
    flush = getattr(values.ValueClass, "write_waiting", None)
    return True if flush is None else bool(flush())


def value_class() -> type:
    """The value class a process that writes metrics should use: ours with the directory set, else in memory."""
    if MULTIPROC_DIR_VARIABLE in os.environ:
        return reserved_value_class()
    return values.MutexValue


def install() -> bool:
    """Make prometheus_client's multiprocess values ours; True when they are (or already were).

    Only while this process has no file of the library's own class open: two
    classes writing one ``counter_<pid>.db`` would overwrite each other's
    entries. That is the case when the client is imported before the app makes
    metrics; otherwise the library's class stays, and a warning says why.
    """
    current = values.ValueClass
    if current is values.MutexValue or getattr(current, "_reserved", False):
        return current is not values.MutexValue
    directory = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if directory and any(Path(directory).glob(f"*_{os.getpid()}.db")):
        logger.warning(
            "panic_metrics_client: prometheus_client's own values already write this process's metric files; "
            "a full disk can still kill it (import panic_metrics_client before making metrics)"
        )
        return False
    values.ValueClass = value_class()
    return True
