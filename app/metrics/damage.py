"""Damaged metric files: read what is whole, set the rest aside, never fail a scrape.

prometheus_client's reader trusts every byte of a file: one cut short
mid-entry, or holding bytes that are not a file (a crash, a disk error, a
restore), raises ``struct.error`` on every scrape, and a length field that
lies can even loop it forever. So every file is checked against the
library's format (``prometheus_client.mmap_dict``: a 4-byte ``used`` header,
4 bytes of padding, then entries of a 4-byte key length, the UTF-8 JSON key
padded with spaces to 8 bytes, and two doubles) before the library reads it.

Damage or growth. A live process writes a file in one order only: it
truncates the file to a larger size *before* it writes an entry, writes the
whole entry *before* it advances ``used``, and writes ``used`` = 8 right
after creating the file. So everything up to ``used`` is always whole and
inside the file, and a partly written newest entry lies beyond ``used``,
where no reader looks. A value rewritten mid-scrape is any 16 bytes, always
two doubles. Hence the only states a healthy live file passes through that
look odd are a file shorter than its header or with ``used`` still 0 (the
microseconds between creating and sizing it); those hold no values, are
served as nothing, and count as damage only once their owner is proven dead
(compaction). Anything else odd within ``used`` (a key that is not a
canonical key, a length that overruns, ``used`` beyond the end of the file)
a writer never leaves, at any moment: that is damage.

A damaged file is set aside: its bytes are copied into ``damaged/`` beside
the metric files, the reason in the copy's name; it is replaced (atomically,
so a concurrent reader sees one or the other) by a file holding only the
entries read whole before the damage, so the series it still served keep
their values; it is counted in ``metrics_multiproc_files_set_aside_total``
and logged once. A live owner keeps writing into its old inode (now out of
the directory): its later increments are lost, its earlier ones stay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict

from app.metrics.archive import ARCHIVE_ID
from app.metrics.definitions import MULTIPROC_FILES_SET_ASIDE, SET_ASIDE_REASONS

log = logging.getLogger(__name__)

#: Where damaged files go, inside the multiprocess directory (no collector looks into subdirectories).
DAMAGED_DIR = "damaged"
#: Copies kept in ``damaged/``, newest first: evidence for an operator, bounded in disk.
DAMAGED_KEPT = 100
#: The work file of a repaired file while it is written (never ``.db``); a crash leaves it for the next wipe.
REPAIR_SUFFIX = ".repair"

_HEADER = struct.Struct(b"i")  # the library's native layouts, exactly
_VALUES = struct.Struct(b"dd")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_TYPES = frozenset({"counter", "histogram", "summary"})
_GAUGE_MODES = frozenset(
    {"all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent"}
)

Entry = tuple[str, float, float]  # (key, value, timestamp), as MmapedDict stores them


@dataclass(frozen=True)
class FileRead:
    """What one file holds that can be trusted, and why the rest cannot (None: the file is whole)."""

    entries: tuple[Entry, ...]
    damage: str | None


def file_type(name: str) -> str | None:
    """The metric type a file's name declares (``gauge`` for every gauge mode), or None if it is no metric file."""
    stem, dot, ext = name.rpartition(".")
    parts = stem.split("_")
    if not dot or ext != "db" or len(parts) < 2 or not all(parts):
        return None
    if parts[0] in _TYPES and len(parts) == 2:
        return parts[0]
    if parts[0] == "gauge" and len(parts) == 3 and parts[1] in _GAUGE_MODES:
        return "gauge"
    return None


def _valid_key(raw: bytes, padding: bytes, typ: str) -> bool:
    """Whether ``raw`` is a key exactly as ``mmap_key`` writes it, one the collector can expose."""
    try:
        text = raw.decode("utf-8")
        parsed = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    # Canonical or not at all: a byte that changed inside the JSON and still parses shows here.
    return (
        not padding.strip(b" ")
        and isinstance(parsed, list)
        and len(parsed) == 4
        and _exposable(*parsed, typ=typ)
        and json.dumps(parsed, sort_keys=True) == text
    )


def _exposable(metric_name: object, name: object, labels: object, help_text: object, *, typ: str) -> bool:
    """Whether a key's parts make a sample the exposition can carry."""
    if not (isinstance(metric_name, str) and isinstance(name, str) and isinstance(help_text, str)):
        return False
    if not (isinstance(labels, dict) and _METRIC_NAME.fullmatch(metric_name) and _METRIC_NAME.fullmatch(name)):
        return False
    if not name.startswith(metric_name):
        return False
    if not all(_LABEL_NAME.fullmatch(k) and isinstance(v, str) for k, v in labels.items()):
        return False
    if typ == "histogram" and "le" in labels:
        try:
            float(labels["le"])
        except ValueError:
            return False
    return True


def parse(data: bytes, typ: str, *, owner_dead: bool) -> FileRead:
    """The entries of one file's bytes up to the first damage, and that damage's reason."""
    # Shorter than a header, or ``used`` still 0: a file being created (see
    # the module's docstring), or whose creator died before writing a value.
    used = _HEADER.unpack_from(data, 0)[0] if len(data) >= 8 else 0
    if used == 0:
        return FileRead((), "empty" if owner_dead else None)
    if used < 8 or used % 8:  # every entry is a multiple of 8 bytes long
        return FileRead((), "bad_header")
    entries, whole = _entries(data, min(used, len(data)), typ)
    if used > len(data):
        return FileRead(entries, "truncated")
    return FileRead(entries, None if whole else "bad_entry")


def _entries(data: bytes, end: int, typ: str) -> tuple[tuple[Entry, ...], bool]:
    """The entries in ``data[8:end]`` up to the first that is not one; whether all were."""
    entries: list[Entry] = []
    seen: set[str] = set()
    pos = 8
    while pos < end:
        if pos + _HEADER.size > end:
            return tuple(entries), False
        length = _HEADER.unpack_from(data, pos)[0]
        key_end = pos + _HEADER.size + length
        value_pos = key_end + (8 - (length + _HEADER.size) % 8)
        if length <= 0 or value_pos + _VALUES.size > end:
            return tuple(entries), False
        raw = data[pos + _HEADER.size : key_end]
        if not _valid_key(raw, data[key_end:value_pos], typ) or raw.decode() in seen:
            return tuple(entries), False
        seen.add(raw.decode())
        value, timestamp = _VALUES.unpack_from(data, value_pos)
        entries.append((raw.decode(), value, timestamp))
        pos = value_pos + _VALUES.size
    return tuple(entries), True


def read(file: Path, *, owner_dead: bool = False) -> FileRead:
    """Check one metric file; raises FileNotFoundError if it is gone."""
    typ = file_type(file.name)
    data = file.read_bytes()
    if typ is None:
        return FileRead((), "unknown_name")
    return parse(data, typ, owner_dead=owner_dead)


def set_aside(directory: Path, file: Path, found: FileRead) -> bool:
    """Move a damaged file out of the directory, leaving what was read whole; count and log it.

    The caller holds the directory's exclusive lock. Returns False if the
    file was gone already (nothing counted).
    """
    assert found.damage is not None  # noqa: S101 - a caller's bug, not input
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return False
    aside = directory / DAMAGED_DIR
    aside.mkdir(exist_ok=True)
    copy = aside / f"{file.name}.{found.damage}.{time.time_ns()}"
    copy.write_bytes(data)
    if found.entries:
        _rewrite(file, found.entries)
    else:
        file.unlink(missing_ok=True)
    reason = found.damage if found.damage in SET_ASIDE_REASONS else "bad_entry"
    MULTIPROC_FILES_SET_ASIDE.labels(reason).inc()
    log.warning(
        "damaged metric file set aside",
        extra={"file": file.name, "reason": found.damage, "kept_entries": len(found.entries), "copy": str(copy)},
    )
    _prune(aside)
    return True


def _rewrite(file: Path, entries: tuple[Entry, ...]) -> None:
    work = file.with_name(file.name + REPAIR_SUFFIX)
    work.unlink(missing_ok=True)  # MmapedDict would append to a leftover
    mmaped = MmapedDict(str(work))
    try:
        for key, value, timestamp in entries:
            mmaped.write_value(key, value, timestamp)
    finally:
        mmaped.close()
    work.replace(file)


def _prune(aside: Path) -> None:
    copies = sorted(aside.iterdir(), key=lambda f: f.stat().st_mtime_ns, reverse=True)
    for old in copies[DAMAGED_KEPT:]:
        with contextlib.suppress(FileNotFoundError):
            old.unlink()


def damaged(files: list[Path]) -> bool:
    """Whether any of ``files`` is damaged as a live owner could never leave it (no lock needed)."""
    for file in files:
        with contextlib.suppress(FileNotFoundError):  # a dead child's live gauge, dropped since the glob
            if read(file).damage is not None:
                return True
    return False


def set_aside_damaged(directory: Path, files: list[Path], *, dead: frozenset[str] = frozenset()) -> list[str]:
    """Set aside every damaged file of ``files``; the names set aside.

    The caller holds the exclusive lock. ``dead`` names the pids whose owner
    is proven dead: like the archive's, their files can no longer be in the
    middle of being created, so an empty one is damage too.
    """
    done = []
    for file in files:
        owner = file.name[: -len(".db")].rpartition("_")[2]
        try:
            found = read(file, owner_dead=owner in dead or owner == ARCHIVE_ID)
        except FileNotFoundError:
            continue
        if found.damage is not None and set_aside(directory, file, found):
            done.append(file.name)
    return done
