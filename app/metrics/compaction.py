"""Merge the metric files of dead processes into one archive per file type.

prometheus_client's multiprocess mode leaves one mmap file per process and
metric type. This module folds the files of dead processes into archive files
written in the library's own format (``counter_archive.db``,
``gauge_max_archive.db``, ...), so the stock ``MultiProcessCollector`` still
reads the directory correctly, while its size no longer grows with every
child Celery recycles.

A merge is made crash safe with a redo journal and made invisible to scrapes
with a ``flock`` on a lock file in the directory; see ``compact``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import mark_process_dead

from app.metrics import pending
from app.metrics.exact import ADDITIVE_PREFIXES, PARTIALS_SUFFIX, grow, partials_text, read_partials
from app.metrics.guards import directory_lock, leased_pids, release_dead_lease, try_dead_lease

log = logging.getLogger(__name__)

#: Stands where a pid stands in an archive's file name. The stock collector
#: only uses that part of the name as the ``pid`` label of ``all`` gauges,
#: which are never archived, so any non-numeric word without ``_`` works.
ARCHIVE_ID = "archive"
JOURNAL_NAME = "compaction.journal"
#: Work files must not end in ``.db``: every collector globs ``*.db``.
TMP_SUFFIX = ".tmp"

Entry = tuple[float, float]  # (value, timestamp) as MmapedDict stores them


class Journal(TypedDict):
    """The redo record of one merge, committed before any visible change."""

    version: int
    archives: list[tuple[str, str]]  # (tmp name, final name)
    sources: list[tuple[str, str]]  # (name, sha256 of the content merged)


def _add(old: Entry, new: Entry) -> Entry:
    return old[0] + new[0], old[1]


def _max(old: Entry, new: Entry) -> Entry:
    return new if new[0] > old[0] else old


def _min(old: Entry, new: Entry) -> Entry:
    return new if new[0] < old[0] else old


def _latest(old: Entry, new: Entry) -> Entry:
    # Strictly later wins, as in the stock collector; timestamp 0 means
    # "never set" and is ignored by the collector whatever we keep.
    return new if new[1] > old[1] else old


#: How two values of one series in files of one prefix combine, so that the
#: collector's answer over the archive equals its answer over the originals.
#: ``live*`` gauges of dead processes are dropped (mark_process_dead) and
#: ``all`` gauges are left alone: the collector labels them with the pid of
#: their file, which an archive cannot carry.
MERGE_RULES: dict[str, Callable[[Entry, Entry], Entry]] = {
    "counter": _add,
    "histogram": _add,  # raw per-bucket counts; the collector accumulates
    "summary": _add,
    "gauge_sum": _add,
    "gauge_max": _max,
    "gauge_min": _min,
    "gauge_mostrecent": _latest,
}


@dataclass(frozen=True)
class CompactionReport:
    """What one ``compact`` call did."""

    merged_pids: tuple[int, ...]
    removed_files: tuple[str, ...]
    #: ``gauge_all_<pid>.db`` files of dead processes, kept as the stock
    #: collector keeps them (their series carry the pid label).
    kept_files: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    #: True when an interrupted merge was finished or rolled back first.
    recovered: bool
    #: Pids with files here but no lease: no provable owner, never merged.
    unproven_pids: tuple[int, ...] = ()
    #: Dead pids left unmerged because their pending counts could not be
    #: resolved yet (database unreachable, or no resolver given).
    unresolved_pids: tuple[int, ...] = ()
    #: Pending records of dead processes settled: (committed, rolled back).
    resolved_records: tuple[int, int] = (0, 0)


# ---------------------------------------------------------------- test seam
#: Called with the name of each step of a merge and of its recovery. Tests
#: set it to simulate a crash between any two steps; it is None in service.
_fault_hook: Callable[[str], None] | None = None


def _checkpoint(step: str) -> None:
    if _fault_hook is not None:
        _fault_hook(step)


# -------------------------------------------------------------------- files
def parse_db_name(name: str) -> tuple[str, str] | None:
    """Split ``gauge_livesum_123.db`` into ``("gauge_livesum", "123")``."""
    if not name.endswith(".db"):
        return None
    prefix, sep, ident = name[:-3].rpartition("_")
    return (prefix, ident) if sep and prefix else None


def db_files(path: Path) -> list[Path]:
    """The files a collector reads, in a stable order."""
    return sorted(path.glob("*.db"))


def _total_bytes(files: Iterable[Path]) -> int:
    total = 0
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            total += f.stat().st_size
    return total


def read_entries(file: Path) -> Iterator[tuple[str, float, float]]:
    """Yield (key, value, timestamp) of one file, read with the library."""
    # A process killed before MmapedDict wrote the header leaves a file too
    # short to hold one; it holds no values either.
    if file.stat().st_size < 8:
        return
    for key, value, timestamp, _pos in MmapedDict.read_all_values_from_file(str(file)):
        yield str(key), float(value), float(timestamp)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_archive(tmp: Path, entries: dict[str, Entry]) -> None:
    tmp.unlink(missing_ok=True)  # MmapedDict would append to an existing file
    mmaped = MmapedDict(str(tmp))
    try:
        for key, (value, timestamp) in entries.items():
            mmaped.write_value(key, value, timestamp)
    finally:
        mmaped.close()
    _fsync_path(tmp)  # munmap left the pages dirty in the page cache


def _merge_entries(prefix: str, files: Iterable[Path]) -> dict[str, Entry]:
    rule = MERGE_RULES[prefix]
    merged: dict[str, Entry] = {}
    for file in files:
        for key, value, timestamp in read_entries(file):
            old = merged.get(key)
            merged[key] = (value, timestamp) if old is None else rule(old, (value, timestamp))
    return merged


# ------------------------------------------------------------------ journal
def _write_journal(path: Path, journal: Journal) -> None:
    tmp = path / (JOURNAL_NAME + TMP_SUFFIX)
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(journal, f)
        f.flush()
        os.fsync(f.fileno())
    _checkpoint("journal_written")
    tmp.replace(path / JOURNAL_NAME)
    _fsync_path(path)  # the rename is the commit point: make it durable
    _checkpoint("journal_committed")


def _roll_forward(path: Path, journal: Journal) -> None:
    """Finish a committed merge; safe to repeat after a crash at any step."""
    for tmp, final in journal["archives"]:
        # rename is atomic: while tmp exists, final still holds the old
        # archive the new one was computed from.
        if (path / tmp).exists():
            (path / tmp).replace(path / final)
            _checkpoint(f"renamed:{final}")
    for name, digest in journal["sources"]:
        source = path / name
        try:
            content = source.read_bytes()
        except FileNotFoundError:
            continue
        # Same name, other content: a new process reused the pid after the
        # merge was committed and its file is not ours to remove. (Content,
        # not inode: inodes are reused at once and change when the
        # directory is copied.)
        if hashlib.sha256(content).hexdigest() == digest:
            source.unlink()
            _checkpoint(f"unlinked:{name}")
    _fsync_path(path)
    (path / JOURNAL_NAME).unlink()
    _fsync_path(path)
    _checkpoint("journal_removed")


def _parse_journal(raw: object) -> Journal:
    # The journal is renamed into place only once complete and fsynced, so
    # anything unexpected is damage an operator must see, not guess past.
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise ValueError(f"unreadable compaction journal: {raw!r}")
    return {
        "version": 1,
        "archives": [(str(tmp), str(final)) for tmp, final in raw["archives"]],
        "sources": [(str(name), str(digest)) for name, digest in raw["sources"]],
    }


def recover_locked(path: Path) -> bool:
    """Finish a committed merge, or drop the work files of an uncommitted one.

    The caller holds the exclusive lock. Returns True if there was anything
    to do.
    """
    did_something = False
    journal_path = path / JOURNAL_NAME
    if journal_path.exists():
        with journal_path.open(encoding="utf-8") as f:
            journal = _parse_journal(json.load(f))
        _roll_forward(path, journal)
        did_something = True
    # Without a journal no merge was committed; its sources are intact, so
    # its half-written archives are garbage.
    for tmp in path.glob("*" + TMP_SUFFIX):
        tmp.unlink()
        did_something = True
    return did_something


# ----------------------------------------------------------------- compact
def compact(
    path: Path,
    *,
    is_alive: Callable[[int], bool] | None = None,
    resolve: pending.Resolver | None = None,
) -> CompactionReport:
    """Fold the files of dead processes into the archive; drop their live gauges.

    Under the exclusive lock: finish any interrupted merge, find the pids
    proven dead (their lease taken, see ``app.metrics.guards``; or, for
    tests, ``is_alive`` false), settle their pending counts (``resolve``
    tells whether an attempt committed; a pid whose records cannot be
    settled is left for a later pass), remove their ``gauge_live*`` files
    (``mark_process_dead``), then merge their counter, histogram, summary and
    ``sum``/``max``/``min``/``mostrecent`` gauge files into the archive:
    new archives are written to ``*.tmp`` files and fsynced, a journal naming
    them and the sources is committed by an atomic rename, then the archives
    are renamed into place, the sources unlinked and the journal removed.
    A crash before the commit leaves sources and old archive untouched; a
    crash after it is finished by the next ``recover``/``compact``/scrape.
    """
    path = Path(path)
    held: dict[int, int] = {}
    merged: list[int] = []
    try:
        # Proving death and asking the database happen outside the directory
        # lock, so a slow or unreachable database never stalls a scrape. The
        # dead pids' leases stay held meanwhile, so no process that reuses
        # one of their pids can write a file before the merge is done.
        pids = _known_pids(path)
        unproven: list[int] = []
        if is_alive is not None:
            dead = sorted(pid for pid in pids if not is_alive(pid))
        else:
            leased = leased_pids(path)
            for pid in sorted(pids):
                fd = try_dead_lease(path, pid)
                if fd is not None:
                    held[pid] = fd
                elif pid not in leased:
                    unproven.append(pid)
            dead = sorted(held)
        decisions, unresolved = _decide_pending(path, dead, resolve)
        dead = [pid for pid in dead if pid not in unresolved]
        with directory_lock(path, exclusive=True):
            recovered = recover_locked(path)
            before = db_files(path)
            bytes_before = _total_bytes(before)
            settled = _settle_pending(decisions, dead)
            merged_pids, removed, kept = _merge_dead(path, [(f, parse_db_name(f.name)) for f in before], dead)
            merged = dead
            bytes_after = _total_bytes(db_files(path))
    finally:
        for pid, fd in held.items():
            release_dead_lease(path, pid, fd, remove=pid in merged)
    return CompactionReport(
        merged_pids=merged_pids,
        removed_files=removed,
        kept_files=kept,
        bytes_before=bytes_before,
        bytes_after=bytes_after,
        recovered=recovered,
        unproven_pids=tuple(unproven),
        unresolved_pids=tuple(sorted(unresolved)),
        resolved_records=settled,
    )


def _known_pids(path: Path) -> set[int]:
    """Pids with metric files, pending records or leases here."""
    named = (parse_db_name(f.name) for f in db_files(path))
    with_files = {int(p[1]) for p in named if p is not None and p[1].isdigit()}
    return with_files | pending.pids_with_records(path) | leased_pids(path)


def _decide_pending(path: Path, dead: list[int], resolve: pending.Resolver | None) -> tuple[dict[Path, bool], set[int]]:
    """Whether each pending record of the dead pids committed; the pids that must wait."""
    decisions: dict[Path, bool] = {}
    unresolved: set[int] = set()
    for pid in dead:
        for record_path in pending.records_of(path, pid):
            record = pending.read(record_path)
            if record.expected_rows and resolve is None:
                unresolved.add(pid)
                break
            try:
                # An attempt that inserted nothing new moved only duplicate
                # counts, which stand whether or not it committed.
                decisions[record_path] = record.expected_rows == 0 or (
                    resolve is not None and resolve(record.token, record.expected_rows)
                )
            except Exception:  # e.g. the database is down: merge this pid later, never before
                log.warning("cannot settle pending counts yet", exc_info=True, extra={"pid": pid})
                unresolved.add(pid)
                break
    return decisions, unresolved


def _settle_pending(decisions: dict[Path, bool], dead: list[int]) -> tuple[int, int]:
    """Under the lock: write committed targets into dead files, drop rolled-back records."""
    dead_set = set(dead)
    committed = rolled_back = 0
    for record_path, done in sorted(decisions.items()):
        record = pending.read(record_path)
        if record.pid not in dead_set:
            continue
        for part in record_path.parent.glob(f"{pending.PREFIX}{record.pid}-*{pending.PART_SUFFIX}"):
            part.unlink(missing_ok=True)  # never renamed into place: its attempt never reached COMMIT
        pending.finish_for_dead_process(record, committed=done)
        _checkpoint(f"pending_settled:{record_path.name}")
        committed += done
        rolled_back += not done
    return committed, rolled_back


def _merge_dead(
    path: Path, parsed: list[tuple[Path, tuple[str, str] | None]], dead: list[int]
) -> tuple[tuple[int, ...], tuple[str, ...], tuple[str, ...]]:
    dead_ids = {str(pid) for pid in dead}
    # Dropping live gauges of dead processes is mark_process_dead's job;
    # it is idempotent, so it needs no journal.
    removed = [f.name for f, p in parsed if p is not None and p[1] in dead_ids and p[0].startswith("gauge_live")]
    for pid in dead:
        mark_process_dead(pid, str(path))
    if dead:
        _checkpoint("live_gauges_dropped")

    sources: dict[str, list[Path]] = {}
    kept: list[str] = []
    for f, p in parsed:
        if p is None or p[1] not in dead_ids:
            continue
        if p[0] in MERGE_RULES:
            sources.setdefault(p[0], []).append(f)
        elif p[0] == "gauge_all":
            kept.append(f.name)
    if sources:
        _merge(path, sources)
        removed.extend(f.name for files in sources.values() for f in files)
    removed_set = set(removed)
    merged_pids = sorted({int(p[1]) for f, p in parsed if p is not None and f.name in removed_set})
    return tuple(merged_pids), tuple(sorted(removed)), tuple(kept)


def archive_name(prefix: str) -> str:
    """The archive file of one file prefix, e.g. ``counter_archive.db``."""
    return f"{prefix}_{ARCHIVE_ID}.db"


def partials_name(prefix: str) -> str:
    """The exact partials beside an additive archive (see ``app.metrics.exact``)."""
    return f"{prefix}_{ARCHIVE_ID}{PARTIALS_SUFFIX}"


def _merge_additive(path: Path, prefix: str, files: Iterable[Path]) -> tuple[dict[str, list[float]], dict[str, Entry]]:
    """Exact partials of the archive plus ``files``, and the rounded archive the stock collector reads."""
    final = path / archive_name(prefix)
    partials = read_partials(path / partials_name(prefix))
    if not partials and final.exists():
        # An archive written before partials existed: its values are exact partials too.
        partials = {key: [value] for key, value, _ts in read_entries(final)}
    for file in files:
        for key, value, _timestamp in read_entries(file):
            grow(partials.setdefault(key, []), value)
    rounded = {key: (math.fsum(values), 0.0) for key, values in partials.items()}
    return partials, rounded


def _merge(path: Path, sources: dict[str, list[Path]]) -> None:
    archives: list[tuple[str, str]] = []
    for prefix in sorted(sources):
        final = path / archive_name(prefix)
        tmp = path / (final.name + TMP_SUFFIX)
        if prefix in ADDITIVE_PREFIXES:
            partials, entries = _merge_additive(path, prefix, sources[prefix])
            partials_tmp = path / (partials_name(prefix) + TMP_SUFFIX)
            partials_tmp.write_text(partials_text(partials), encoding="utf-8")
            _fsync_path(partials_tmp)
            archives.append((partials_tmp.name, partials_name(prefix)))
        else:
            entries = _merge_entries(prefix, ([final] if final.exists() else []) + sources[prefix])
        _write_archive(tmp, entries)
        _checkpoint(f"archive_written:{prefix}")
        archives.append((tmp.name, final.name))
    _fsync_path(path)  # the journal must not name files a power cut can lose
    _checkpoint("archives_synced")
    listed = [(f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for files in sources.values() for f in files]
    journal: Journal = {"version": 1, "archives": archives, "sources": listed}
    _write_journal(path, journal)
    _roll_forward(path, journal)
