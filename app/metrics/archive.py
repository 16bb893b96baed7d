"""The archive of dead processes' metric files: how their values fold together, written crash safe.

prometheus_client's multiprocess mode leaves one mmap file per process and
metric type. The files of dead processes fold into archive files written in
the library's own format (``counter_archive.db``, ``gauge_max_archive.db``,
...), so the stock ``MultiProcessCollector`` still reads the directory
correctly while its size no longer grows with every child Celery recycles;
additive ones keep their exact sum beside them (``app.metrics.exact``).

A merge is made crash safe with a redo journal (``merge_into_archive``,
``recover_locked``); the caller holds the directory's exclusive lock, which
keeps it invisible to scrapes. Which processes are dead, and what they still
owe, is ``app.metrics.compaction``'s business.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypedDict

from prometheus_client.mmap_dict import MmapedDict

from app.metrics.exact import ADDITIVE_PREFIXES, PARTIALS_SUFFIX, partials_text, read_partials
from panic_metrics_client.exact_sum import grow

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


# ---------------------------------------------------------------- test seam
#: Called with the name of each step of a merge, of its recovery and of the
#: compaction around it (app.metrics.compaction). Tests
#: set it to simulate a crash between any two steps; it is None in service.
_fault_hook: Callable[[str], None] | None = None


def checkpoint(step: str) -> None:
    """Pass the named step of a merge or its recovery to the test seam (nothing in service)."""
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


def total_bytes(files: Iterable[Path]) -> int:
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
    checkpoint("journal_written")
    tmp.replace(path / JOURNAL_NAME)
    _fsync_path(path)  # the rename is the commit point: make it durable
    checkpoint("journal_committed")


def _roll_forward(path: Path, journal: Journal) -> None:
    """Finish a committed merge; safe to repeat after a crash at any step."""
    for tmp, final in journal["archives"]:
        # rename is atomic: while tmp exists, final still holds the old
        # archive the new one was computed from.
        if (path / tmp).exists():
            (path / tmp).replace(path / final)
            checkpoint(f"renamed:{final}")
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
            checkpoint(f"unlinked:{name}")
    _fsync_path(path)
    (path / JOURNAL_NAME).unlink()
    _fsync_path(path)
    checkpoint("journal_removed")


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


def archive_name(prefix: str) -> str:
    """The archive file of one file prefix, e.g. ``counter_archive.db``."""
    return f"{prefix}_{ARCHIVE_ID}.db"


def partials_name(prefix: str) -> str:
    """The exact partials beside an additive archive (see ``app.metrics.exact``)."""
    return f"{prefix}_{ARCHIVE_ID}{PARTIALS_SUFFIX}"


def archived_values(path: Path, prefix: str, partials: dict[str, list[float]]) -> dict[str, list[float]]:
    """An additive archive's exact partials, its series in the order its ``.db`` file holds them.

    That is the order the stock collector meets them in when it reads the
    rounded archive, so a scrape that reads the partials instead still lists
    every series where the stock collector lists it. A series only the
    partials know (the ``.db`` set aside as damaged) follows; one only the
    ``.db`` knows (an archive older than partials) keeps its value.
    """
    ordered: dict[str, list[float]] = {}
    with contextlib.suppress(FileNotFoundError):
        for key, value, _timestamp in read_entries(path / archive_name(prefix)):
            ordered[key] = partials.get(key, [value])
    for key, values in partials.items():
        ordered.setdefault(key, values)
    return ordered


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


def merge_into_archive(path: Path, sources: dict[str, list[Path]]) -> None:
    """Fold ``sources`` (file prefix -> files) into the archive; the caller holds the exclusive lock."""
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
        checkpoint(f"archive_written:{prefix}")
        archives.append((tmp.name, final.name))
    _fsync_path(path)  # the journal must not name files a power cut can lose
    checkpoint("archives_synced")
    listed = [(f.name, hashlib.sha256(f.read_bytes()).hexdigest()) for files in sources.values() for f in files]
    journal: Journal = {"version": 1, "archives": archives, "sources": listed}
    _write_journal(path, journal)
    _roll_forward(path, journal)
