"""The multiprocess directory: its life cycle, its scrapes, its health.

By the book (prometheus_client's multiprocess docs): the worker's main
process wipes the directory before the pool starts, and every scrape reads it
through a fresh registry. On top of that, ``compact`` (see
``app.metrics.compaction`` and ``app.metrics.archive``) folds the files of dead children into an archive,
and scrapes read under a shared lock so that they never see half a merge.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from app.metrics.archive import (
    JOURNAL_NAME,
    TMP_SUFFIX,
    archive_name,
    archived_values,
    db_files,
    partials_name,
    recover_locked,
)
from app.metrics.compaction import CompactionReport, compact
from app.metrics.damage import REPAIR_SUFFIX, damaged, set_aside_damaged
from app.metrics.exact import (
    ADDITIVE_PREFIXES,
    PARTIALS_SUFFIX,
    accumulate,
    add_archived,
    extend_metrics,
    read_metrics,
    read_partials,
)
from app.metrics.guards import directory_lock, pid_alive
from app.metrics.pending import PREFIX as PENDING_PREFIX

__all__ = [
    "CompactionReport",
    "DirectoryCollector",
    "DirectoryStats",
    "collect_registry",
    "compact",
    "directory_stats",
    "pid_alive",
    "prepare_directory",
    "recover",
    "wipe_directory",
    "writable",
]

#: /health calls the directory unwritable below this much free space: the
#: library grows its files with a sparse truncate, so a full disk shows up
#: as SIGBUS in a child writing a metric, not as an error anyone sees.
MIN_FREE_BYTES = 1 << 20


@dataclass(frozen=True)
class DirectoryStats:
    """Size of what a scrape reads: the ``*.db`` files and their bytes."""

    files: int
    bytes: int


def prepare_directory(path: Path) -> None:
    """Create the directory if missing and finish any interrupted merge.

    For the endpoint's start; unlike ``wipe_directory`` it keeps the metric
    files and leaves the directory claimed by whoever claimed it.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    recover(path)


def recover(path: Path) -> bool:
    """Finish a merge a crash interrupted after its commit, or roll it back.

    Returns True if there was anything to do. ``compact`` and scrapes do this
    on their own; call it where a merge may have been cut short, e.g. at start.
    """
    path = Path(path)
    with directory_lock(path, exclusive=True):
        return recover_locked(path)


def wipe_directory(path: Path) -> None:
    """Remove every metric file, archive and merge leftover: a fresh start.

    Call it in the worker's main process before the pool starts and before
    any metric object exists in this process: a process keeps writing into
    the mmap of a file unlinked under it, and those writes are lost. Pending
    records go with the files they describe; leases stay (their holders live).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    with directory_lock(path, exclusive=True):
        # Journal first: a crash mid-wipe must not leave a journal that
        # names archives or sources of a run we are throwing away.
        (path / JOURNAL_NAME).unlink(missing_ok=True)
        for f in [
            *path.glob("*" + TMP_SUFFIX),
            *path.glob("*" + REPAIR_SUFFIX),
            *path.glob("*.db"),
            *path.glob("*" + PARTIALS_SUFFIX),
            *path.glob(PENDING_PREFIX + "*"),
        ]:
            f.unlink(missing_ok=True)


class DirectoryCollector(Collector):
    """The stock collector's merge with exact sums, reading the directory under its shared lock.

    Additive series are read from the live files plus the archives' exact
    partials and summed with ``math.fsum`` (see ``app.metrics.exact`` for
    why that never lowers a value); the other gauge modes merge as the stock
    collector merges them. The rounded ``*_archive.db`` files are there for
    the stock collector; here only their order of series is read. Samples
    come out in the stock collector's order over the files sorted by name,
    each series contiguous (``app.metrics.exact.accumulate``).
    """

    def __init__(self, path: Path, registry: CollectorRegistry | None = None) -> None:
        if not Path(path).is_dir():
            raise ValueError(f"multiprocess directory {path} does not exist")
        self._dir = Path(path)
        if registry is not None:
            registry.register(self)

    def _read(self) -> list[Metric]:
        # Files in name order, as the stock collector would read them sorted;
        # an additive archive is read as its exact partials at its own place,
        # so every metric and series keeps the place the stock collector gives it.
        archives = {archive_name(prefix): prefix for prefix in ADDITIVE_PREFIXES}
        partials = {prefix: read_partials(self._dir / partials_name(prefix)) for prefix in ADDITIVE_PREFIXES}
        files = db_files(self._dir)
        files += [self._dir / name for name, prefix in archives.items() if partials[prefix]]
        metrics: dict[str, Metric] = {}
        run: list[str] = []
        for f in sorted(set(files)):
            prefix = archives.get(f.name)
            if prefix is None:
                run.append(str(f))
                continue
            extend_metrics(metrics, read_metrics(run))
            run = []
            add_archived(metrics, prefix, archived_values(self._dir, prefix, partials[prefix]))
        extend_metrics(metrics, read_metrics(run))
        return accumulate(metrics.values())

    def collect(self) -> Iterable[Metric]:
        """Read every ``*.db`` file, archives included, as one consistent state."""
        with directory_lock(self._dir, exclusive=False):
            # A compactor holds the exclusive lock for a whole merge, so a
            # journal seen here belongs to one that died half way. A damaged
            # file would fail the library's reader: it is set aside first
            # (app.metrics.damage), under the exclusive lock so that two
            # scrapes never set the same file aside twice.
            if not (self._dir / JOURNAL_NAME).exists() and not damaged(db_files(self._dir)):
                return self._read()
        with directory_lock(self._dir, exclusive=True):
            recover_locked(self._dir)
            set_aside_damaged(self._dir, db_files(self._dir))
            return self._read()


def collect_registry(path: Path) -> CollectorRegistry:
    """A fresh registry for one scrape, collecting the whole directory."""
    registry = CollectorRegistry()
    DirectoryCollector(Path(path), registry)
    return registry


def directory_stats(path: Path) -> DirectoryStats:
    """Count and size the files a scrape reads (apparent size, not blocks)."""
    files = 0
    size = 0
    for f in db_files(Path(path)):
        with contextlib.suppress(FileNotFoundError):  # a dead child's live gauge
            size += f.stat().st_size
            files += 1
    return DirectoryStats(files=files, bytes=size)


def writable(path: Path) -> bool:
    """Whether new metric files can be created here, for /health."""
    try:
        fd, probe = tempfile.mkstemp(dir=path, prefix=".writable-", suffix=".probe")
        os.close(fd)
        Path(probe).unlink()
        stat = os.statvfs(path)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize >= MIN_FREE_BYTES
