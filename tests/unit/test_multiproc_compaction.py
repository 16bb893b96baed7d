"""Compaction keeps every scrape equal to the stock collector's answer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from app.metrics.archive import MERGE_RULES
from app.metrics.multiproc import (
    collect_registry,
    compact,
    directory_stats,
    pid_alive,
    prepare_directory,
    wipe_directory,
    writable,
)
from tests.unit.multiproc_helpers import (
    FIRST_FAKE_PID,
    GAUGE_MODES,
    SERVICE_TYPES,
    USER_TYPES,
    ZONES,
    Clock,
    SimulatedProcess,
    canonical,
    expected_after_death,
    files_of,
    leftovers,
    run_child,
    run_real_children,
    stock_samples,
)

SLOTS = 3  # pool size of the simulated worker

# Multiples of 1/4 add up exactly in any order, so the archive's pre-summed
# values compare equal to the stock collector's sums, not merely close.
quarters = st.integers(min_value=0, max_value=800).map(lambda n: n / 4)
signed_quarters = st.integers(min_value=-400, max_value=400).map(lambda n: n / 4)
slot = st.integers(min_value=0, max_value=SLOTS - 1)

writes = st.lists(
    st.one_of(
        st.tuples(st.just("inc"), st.sampled_from(SERVICE_TYPES), quarters),
        st.tuples(st.just("observe"), st.sampled_from(ZONES), quarters),
        st.tuples(st.just("summary"), st.sampled_from(USER_TYPES), quarters),
        # One value in every mode at once: mode-specific merges meet far
        # more often than if each write picked one of ten modes.
        st.tuples(st.just("gauge"), st.sampled_from(ZONES[:2]), signed_quarters),
    ),
    min_size=1,
    max_size=4,
)
# An episode: some child of the pool handles a few tasks, then maybe exits,
# then maybe the sweeper runs. Lists of episodes give children that outlive
# several compactions, die in the middle of others, and archives that are
# merged into again and again.
episodes = st.lists(
    st.tuples(slot, writes, st.booleans(), st.booleans()),
    min_size=1,
    max_size=15,
)

# A child sets a gauge, dies and is archived; a later child does the same:
# the second merge must combine with the archive by each mode's rule.
ARCHIVE_THEN_SOURCE = [
    (0, [("gauge", "downtown", 2.0)], True, True),
    (0, [("gauge", "downtown", 1.0)], True, True),
    (1, [("inc", "fire", 1.0)], False, False),
    (0, [("gauge", "downtown", 3.0)], True, True),
]

Write = tuple[object, ...]
Episode = tuple[int, list[Write], bool, bool]


@dataclass
class Pool:
    """A prefork pool whose children die and are replaced, as with max_tasks_per_child."""

    work: Path  # the directory we compact
    reference: Path  # dead children's files, never merged
    clock: Clock = field(default_factory=Clock)
    children: dict[int, SimulatedProcess] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    next_pid: int = FIRST_FAKE_PID

    def child(self, index: int) -> SimulatedProcess:
        if index not in self.children:
            self.children[index] = SimulatedProcess(self.work, self.next_pid, self.clock)
            self.next_pid += 1
        return self.children[index]

    def kill(self, index: int) -> None:
        child = self.children.pop(index, None)
        if child is None:
            return
        child.exit()
        for f in files_of(self.work, [child.pid]):
            shutil.copy(f, self.reference / f.name)
        mark_process_dead(child.pid, str(self.reference))
        self.dead.add(child.pid)

    def is_alive(self, pid: int) -> bool:
        return pid not in self.dead

    def expected(self) -> list[tuple[object, ...]]:
        live = files_of(self.work, [c.pid for c in self.children.values()])
        return stock_samples([*self.reference.glob("*.db"), *live])


def run_pool(scenario: list[Episode]) -> None:
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as reference:
        pool = Pool(Path(work), Path(reference))
        for index, child_writes, exits, sweep in scenario:
            child = pool.child(index)
            for write in child_writes:
                match write:
                    case ("inc", str(service_type), float(amount)):
                        child.inc_requests(service_type, amount)
                    case ("observe", str(zone), float(seconds)):
                        child.observe_response_time(zone, seconds)
                    case ("summary", str(user_type), float(seconds)):
                        child.observe_auth_time(user_type, seconds)
                    case ("gauge", str(zone), float(value)):
                        for mode in GAUGE_MODES:
                            child.set_gauge(mode, zone, value)
                    case _:
                        raise AssertionError(f"unknown write {write!r}")
            if exits:
                pool.kill(index)
            if sweep:
                compact(pool.work, is_alive=pool.is_alive)
                assert canonical(collect_registry(pool.work).collect()) == pool.expected()
        compact(pool.work, is_alive=pool.is_alive)
        assert canonical(collect_registry(pool.work).collect()) == pool.expected()
        assert leftovers(pool.work, pool.dead) == []
        for child in pool.children.values():
            child.exit()


@settings(max_examples=150, deadline=None)
@given(episodes)
@example(ARCHIVE_THEN_SOURCE)
def test_compacted_directory_scrapes_like_stock_collector_without_merge(scenario: list[Episode]) -> None:
    """Any interleaving of writes, deaths and compactions scrapes as if nothing was merged."""
    run_pool(scenario)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(episodes)
def test_compacted_directory_scrapes_like_stock_collector_many_examples(scenario: list[Episode]) -> None:
    """The same property, searched harder."""
    run_pool(scenario)


def populate(directory: Path, pids: range, clock: Clock) -> None:
    for pid in pids:
        run_child(directory, pid, clock, seed=pid)


def test_stock_collector_reads_compacted_directory_correctly(tmp_path: Path) -> None:
    """The archive is in the library's format: the unmodified collector agrees."""
    clock = Clock()
    populate(tmp_path, range(FIRST_FAKE_PID, FIRST_FAKE_PID + 6), clock)
    dead = range(FIRST_FAKE_PID, FIRST_FAKE_PID + 4)
    expected = expected_after_death(tmp_path, dead)

    compact(tmp_path, is_alive=lambda pid: pid not in dead)

    assert canonical(MultiProcessCollector(None, path=str(tmp_path)).collect()) == expected
    assert canonical(collect_registry(tmp_path).collect()) == expected


def test_directory_stays_flat_as_children_recycle(tmp_path: Path) -> None:
    """After 1 or 100 recycled children the scrape reads the same files."""
    clock = Clock()
    dead: set[int] = set()
    sizes = []
    modes = [mode for mode in GAUGE_MODES if mode != "all"]  # see the next test
    for pid in range(FIRST_FAKE_PID, FIRST_FAKE_PID + 100):
        run_child(tmp_path, pid, clock, seed=pid, gauge_modes=modes)
        dead.add(pid)
        compact(tmp_path, is_alive=lambda p: p not in dead)
        sizes.append(directory_stats(tmp_path))

    assert sizes[-1] == sizes[0]
    assert sorted(f.name for f in tmp_path.glob("*.db")) == sorted(f"{prefix}_archive.db" for prefix in MERGE_RULES)


def test_gauge_all_files_of_dead_processes_are_kept_like_stock(tmp_path: Path) -> None:
    """`all` gauges carry the pid label, so they stay, as mark_process_dead leaves them."""
    run_child(tmp_path, FIRST_FAKE_PID, Clock(), seed=1)

    report = compact(tmp_path, is_alive=lambda _pid: False)

    assert report.kept_files == (f"gauge_all_{FIRST_FAKE_PID}.db",)
    assert (tmp_path / f"gauge_all_{FIRST_FAKE_PID}.db").exists()


def test_compaction_report_names_pids_files_and_bytes(tmp_path: Path) -> None:
    """The report says which children were merged and what the directory shrank to."""
    clock = Clock()
    populate(tmp_path, range(FIRST_FAKE_PID, FIRST_FAKE_PID + 3), clock)
    dead = {FIRST_FAKE_PID, FIRST_FAKE_PID + 1}

    report = compact(tmp_path, is_alive=lambda pid: pid not in dead)

    assert report.merged_pids == tuple(sorted(dead))
    assert set(report.removed_files) == {name for pid in dead for name in _names(pid)}
    assert report.bytes_before > report.bytes_after == directory_stats(tmp_path).bytes
    assert not report.recovered


def _names(pid: int) -> list[str]:
    prefixes = ["counter", "histogram", "summary"] + [f"gauge_{m}" for m in GAUGE_MODES if m != "all"]
    return [f"{prefix}_{pid}.db" for prefix in prefixes]


def test_compaction_with_no_dead_children_changes_nothing(tmp_path: Path) -> None:
    """A sweeper pass over a healthy pool writes nothing."""
    populate(tmp_path, range(FIRST_FAKE_PID, FIRST_FAKE_PID + 2), Clock())
    before = {f.name: f.stat().st_mtime_ns for f in tmp_path.glob("*.db")}

    report = compact(tmp_path, is_alive=lambda _pid: True)

    assert report.merged_pids == ()
    assert report.removed_files == ()
    assert {f.name: f.stat().st_mtime_ns for f in tmp_path.glob("*.db")} == before


def test_real_dead_children_are_merged_with_default_liveness_check(tmp_path: Path) -> None:
    """Children that really ran and exited are found dead by pid and merged."""
    pids = run_real_children(tmp_path, 3)
    expected = expected_after_death(tmp_path, pids)

    report = compact(tmp_path)

    assert report.merged_pids == tuple(sorted(pids))
    assert canonical(collect_registry(tmp_path).collect()) == expected
    assert leftovers(tmp_path, pids) == []


def test_pid_alive_tells_running_from_reaped_processes() -> None:
    """Our own pid is alive, a reaped child's is not, pid 0 is never a process."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)

    assert pid_alive(os.getpid())
    assert not pid_alive(child.pid)
    assert not pid_alive(0)
    assert not pid_alive(-1)


def test_wipe_directory_removes_metric_files_and_merge_leftovers(tmp_path: Path) -> None:
    """A worker start begins from an empty directory."""
    populate(tmp_path, range(FIRST_FAKE_PID, FIRST_FAKE_PID + 2), Clock())
    compact(tmp_path, is_alive=lambda pid: pid != FIRST_FAKE_PID)
    (tmp_path / "counter_archive.db.tmp").write_bytes(b"half a merge")
    (tmp_path / "compaction.journal").write_text("{}")

    wipe_directory(tmp_path)

    assert sorted(f.name for f in tmp_path.iterdir()) == ["compaction.lock"]
    assert collect_registry(tmp_path).get_sample_value("panic_requests_total", {"service_type": "fire"}) is None


def test_files_without_a_lease_are_never_merged(tmp_path: Path) -> None:
    """A dead writer that held no lease has no provable owner: its files stay."""
    pids = run_real_children(tmp_path, 2)
    for pid in pids:
        (tmp_path / f"lease-{pid}.lock").unlink()
    before = sorted(f.name for f in tmp_path.glob("*.db"))

    report = compact(tmp_path)

    assert report.merged_pids == ()
    assert sorted(report.unproven_pids) == sorted(pids)
    assert sorted(f.name for f in tmp_path.glob("*.db")) == before


def test_a_live_lease_holder_is_never_merged_and_its_lease_outlives_compaction(tmp_path: Path) -> None:
    """A writer whose lease is held (alive, in any pid namespace) keeps its files; a dead one's lease goes."""
    dead = run_real_children(tmp_path, 1)
    alive = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from app.metrics.guards import take_lease;"
            "take_lease(Path(sys.argv[1])); print('ready', flush=True); sys.stdin.read()",
            str(tmp_path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        assert alive.stdout is not None
        assert alive.stdout.readline().strip() == "ready"
        (tmp_path / f"counter_{alive.pid}.db").write_bytes((tmp_path / f"counter_{dead[0]}.db").read_bytes())

        report = compact(tmp_path)

        assert report.merged_pids == tuple(dead)
        assert (tmp_path / f"counter_{alive.pid}.db").exists()
        assert (tmp_path / f"lease-{alive.pid}.lock").exists()
        assert not (tmp_path / f"lease-{dead[0]}.lock").exists()
    finally:
        alive.kill()
        alive.communicate(timeout=60)  # reaps it and closes the pipes
    assert compact(tmp_path).merged_pids == (alive.pid,)


def test_prepare_directory_creates_a_missing_directory(tmp_path: Path) -> None:
    """The endpoint can start before any worker has made the directory."""
    directory = tmp_path / "var" / "prometheus_multiproc"

    prepare_directory(directory)

    assert directory.is_dir()
    assert directory_stats(directory).files == 0


def test_directory_stats_counts_what_a_scrape_reads(tmp_path: Path) -> None:
    """Only the *.db files a collector reads are counted."""
    populate(tmp_path, range(FIRST_FAKE_PID, FIRST_FAKE_PID + 1), Clock())
    (tmp_path / "compaction.lock").touch()
    db = list(tmp_path.glob("*.db"))

    stats = directory_stats(tmp_path)

    assert stats.files == len(db) == 13
    assert stats.bytes == sum(f.stat().st_size for f in db)


def test_writable_is_false_for_a_missing_directory_or_a_file(tmp_path: Path) -> None:
    """/health reports a directory metric files cannot be created in."""
    (tmp_path / "file").touch()

    assert writable(tmp_path)
    assert not writable(tmp_path / "missing")
    assert not writable(tmp_path / "file")
