"""Compaction: find the processes proven dead, settle what they owe, fold their files into the archive.

A process is dead once its lease can be taken (``app.metrics.guards``); its
pending records (``app.metrics.pending``) are settled first, by asking the
store whether each attempt committed, and a process whose records cannot be
settled yet waits for a later pass. Its ``gauge_live*`` files go
(``mark_process_dead``) and the rest folds into the archive
(``app.metrics.archive``), all under the directory's exclusive lock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.multiprocess import mark_process_dead

from app.metrics import pending
from app.metrics.archive import (
    MERGE_RULES,
    checkpoint,
    db_files,
    merge_into_archive,
    parse_db_name,
    recover_locked,
    total_bytes,
)
from app.metrics.damage import set_aside_damaged
from app.metrics.guards import directory_lock, leased_pids, release_dead_lease, try_dead_lease

log = logging.getLogger(__name__)


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
    #: Damaged files moved into ``damaged/`` (app.metrics.damage), what they held whole left in place.
    set_aside_files: tuple[str, ...] = ()


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
            # A damaged file would fail the merge on every pass: set it aside
            # first (app.metrics.damage), keeping what it held whole.
            set_aside = set_aside_damaged(path, db_files(path), dead=frozenset(str(pid) for pid in dead))
            before = db_files(path)
            bytes_before = total_bytes(before)
            settled = _settle_pending(decisions, dead)
            merged_pids, removed, kept = _merge_dead(path, [(f, parse_db_name(f.name)) for f in before], dead)
            merged = dead
            bytes_after = total_bytes(db_files(path))
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
        set_aside_files=tuple(set_aside),
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
        checkpoint(f"pending_settled:{record_path.name}")
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
        checkpoint("live_gauges_dropped")

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
        merge_into_archive(path, sources)
        removed.extend(f.name for files in sources.values() for f in files)
    removed_set = set(removed)
    merged_pids = sorted({int(p[1]) for f, p in parsed if p is not None and f.name in removed_set})
    return tuple(merged_pids), tuple(sorted(removed)), tuple(kept)
