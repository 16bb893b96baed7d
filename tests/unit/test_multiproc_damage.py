"""A damaged metric file never fails a scrape: what it held whole is served, the rest is set aside."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.mmap_dict import MmapedDict

from app.metrics import multiproc_dir
from app.metrics.definitions import SET_ASIDE_REASONS
from app.metrics.guards import directory_lock
from app.metrics.multiproc import collect_registry, compact
from tests.support.services import wait_until
from tests.support.worker import scrape, standalone_endpoint, value
from tests.unit.multiproc_helpers import (
    BUCKETS,
    FIRST_FAKE_PID,
    GAUGE_MODES,
    SERVICE_TYPES,
    USER_TYPES,
    ZONES,
    Clock,
    SampleRow,
    SimulatedProcess,
    canonical,
    files_of,
    run_child,
    run_real_children,
    stock_samples,
)

HEALTHY = (FIRST_FAKE_PID, FIRST_FAKE_PID + 1)
#: The last pid, so its files are read after the healthy ones' (help texts come from the first file read).
VICTIM = FIRST_FAKE_PID + 9
#: Label values only the victim writes, so its series never share a key with a healthy file's.
VICTIM_LABEL = "victim-only"
HEALTHY_VALUES = {*SERVICE_TYPES, *ZONES, *USER_TYPES, *(str(b) for b in BUCKETS), "+Inf"} | {
    str(pid) for pid in HEALTHY
}


def _write_victim(directory: Path, clock: Clock) -> None:
    child = SimulatedProcess(directory, VICTIM, clock)
    for i in range(3):
        child.inc_requests(VICTIM_LABEL, 1 + i)
        child.observe_response_time(VICTIM_LABEL, i * 40.5)
        child.observe_auth_time(VICTIM_LABEL, i / 4)
        for j, mode in enumerate(GAUGE_MODES):
            child.set_gauge(mode, VICTIM_LABEL, i * 3 - j)
    child.exit()


@pytest.fixture(scope="module")
def base() -> Iterator[tuple[Path, list[SampleRow]]]:
    """Healthy children and a victim of every file type; the healthy files' stock answer."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        clock = Clock()
        for pid in HEALTHY:
            run_child(directory, pid, clock, seed=pid)
        _write_victim(directory, clock)
        yield directory, stock_samples(files_of(directory, HEALTHY))


def set_aside_total() -> float:
    """This process's count of files set aside, as its own directory exposes it."""
    registry = collect_registry(multiproc_dir())
    return sum(
        registry.get_sample_value("metrics_multiproc_files_set_aside_total", {"reason": r}) or 0.0
        for r in SET_ASIDE_REASONS
    )


def layout(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """A whole file's ``used`` and its entries as (start, value offset)."""
    used = int.from_bytes(data[:4], "little")
    entries, start = [], 8
    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        for _key, _value, _ts, pos in MmapedDict.read_all_values_from_file(f.name):
            entries.append((start, pos))
            start = pos + 16
    return used, entries


def structure_bytes(data: bytes) -> set[int]:
    """Offsets a writer never leaves inconsistent: the header's length and every entry's length, key and padding."""
    used, entries = layout(data)
    offsets = set(range(4))
    for start, value_pos in entries:
        offsets.update(range(start, value_pos))
    assert max(offsets) < used
    return offsets


def check_healthy(samples: list[SampleRow], healthy: list[SampleRow]) -> None:
    """Every healthy series exactly as before; any other series comes from the victim's labels."""
    keys = {(row[3], row[4]) for row in healthy}
    assert [row for row in samples if (row[3], row[4]) in keys] == healthy
    others = [row for row in samples if (row[3], row[4]) not in keys]
    assert all(any(v not in HEALTHY_VALUES for _, v in row[4]) for row in others), others


Damage = tuple[str, int, int]  # (how, offset, length or byte)


@st.composite
def damages(draw: st.DrawFn, size: int) -> Damage:
    how = draw(st.sampled_from(["truncate", "flip", "zero", "empty", "header"]))
    if how == "header":
        return how, 0, draw(st.integers(-(2**31), 2**31 - 1))
    offset = draw(st.integers(0, size - 1))
    if how == "flip":
        return how, offset, draw(st.integers(1, 255))
    return how, offset, draw(st.integers(1, 64))


def damage(data: bytes, how: str, offset: int, arg: int) -> tuple[bytes, bool]:
    """The damaged bytes, and whether no reader could take them for a file a writer left."""
    _, entries = layout(data)
    if how == "truncate":
        return data[:offset], True
    if how == "empty":
        return b"", True
    changed = bytearray(data)
    if how == "header":
        changed[:4] = arg.to_bytes(4, "little", signed=True)
    for i in range(offset, min(offset + arg, len(data))) if how == "zero" else [offset] if how == "flip" else []:
        changed[i] = 0 if how == "zero" else changed[i] ^ arg
    # A length that ends between two entries is what a writer leaves mid-append: a reader must accept it.
    new_used = int.from_bytes(changed[:4], "little", signed=True)
    if new_used not in {8} | {value_pos + 16 for _, value_pos in entries}:
        return bytes(changed), True
    structure = structure_bytes(data) - set(range(4))
    if how == "flip":  # a flipped letter inside a key may still spell a key; a zeroed one never does
        for start, _ in entries:
            length = int.from_bytes(data[start : start + 4], "little")
            structure -= set(range(start + 4, start + 4 + length))
    visible = {i for i in range(8, new_used) if changed[i] != data[i]}
    return bytes(changed), bool(visible & structure)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_file_is_served_whole_part_and_set_aside(
    base: tuple[Path, list[SampleRow]], data: st.DataObject
) -> None:
    """Any file of any type, damaged any way: scrapes answer, healthy series stay, the file is set aside."""
    source, healthy = base
    name = data.draw(st.sampled_from([f.name for f in files_of(source, [VICTIM])]))
    original = (source / name).read_bytes()
    used, entries = layout(original)
    how, offset, arg = data.draw(damages(used))
    damaged, must_set_aside = damage(original, how, offset, arg)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "multiproc"
        shutil.copytree(source, directory)
        (directory / name).write_bytes(damaged)
        before = set_aside_total()

        samples = canonical(collect_registry(directory).collect())

        check_healthy(samples, healthy)
        if how == "truncate" and offset >= 8:
            # The entries before the cut, exactly as the stock reader reads them from a whole file.
            end = max([8] + [value_pos + 16 for _, value_pos in entries if value_pos + 16 <= offset])
            rebuilt = Path(tmp) / "rebuilt"
            shutil.copytree(source, rebuilt)
            (rebuilt / name).write_bytes(end.to_bytes(4, "little") + original[4:end])
            assert samples == stock_samples(rebuilt.glob("*.db"))

        compact(directory, is_alive=lambda pid: pid != VICTIM)

        check_healthy(canonical(collect_registry(directory).collect()), healthy)
        copies = list((directory / "damaged").glob(f"{name}.*")) if (directory / "damaged").exists() else []
        if must_set_aside:
            assert len(copies) == 1, (how, offset, arg)
            assert copies[0].read_bytes() == damaged
            assert set_aside_total() == before + 1
        if not copies and (directory / name).exists():
            # Kept: a damage the format cannot show (no checksum), read by the stock reader without error.
            stock_samples([directory / name])


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    with standalone_endpoint(tmp_path) as (url, directory):
        yield url, directory


@pytest.mark.parametrize("reason", ["truncated", "empty"])
def test_damaged_file_gives_200_and_the_self_metric_and_compaction_clears_it(
    endpoint: tuple[str, Path], reason: str
) -> None:
    """Through the real endpoint: a dead child's damaged file still scrapes, is counted, and leaves the directory."""
    url, directory = endpoint
    with directory_lock(directory, exclusive=True):  # no merge of the children until it is damaged
        pids = run_real_children(directory, 2)
        victim = directory / f"counter_{pids[0]}.db"
        data = victim.read_bytes()
        used, _ = layout(data)
        # Cut inside the last entry (the first ones stay whole), or nothing left at all.
        victim.write_bytes(data[: used - 8] if reason == "truncated" else b"")

    assert scrape(url)  # raises on anything but 200
    wait_until(
        lambda: value(scrape(url), "metrics_multiproc_files_set_aside_total", reason=reason) == 1,
        timeout=30,
        what="the damaged file counted as set aside",
    )
    wait_until(lambda: not victim.exists(), timeout=30, what="compaction to clear the file")
    assert scrape(url)
    assert [f.name.removeprefix(victim.name + ".").split(".")[0] for f in (directory / "damaged").iterdir()] == [reason]
