"""A merge cut short at any step neither loses nor double counts."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.metrics import archive
from app.metrics.multiproc import collect_registry, compact, recover
from tests.unit.multiproc_helpers import (
    FIRST_FAKE_PID,
    Clock,
    canonical,
    expected_after_death,
    leftovers,
    run_child,
    run_real_children,
)

OLD_DEAD = range(FIRST_FAKE_PID, FIRST_FAKE_PID + 2)  # already in the archive
NEW_DEAD = range(FIRST_FAKE_PID + 2, FIRST_FAKE_PID + 4)  # the merge under test
ALIVE = range(FIRST_FAKE_PID + 4, FIRST_FAKE_PID + 5)
DEAD = {*OLD_DEAD, *NEW_DEAD}


class Crash(BaseException):
    """Stands for SIGKILL: nothing after it runs, no cleanup in between."""


def is_alive(pid: int) -> bool:
    return pid not in DEAD


@pytest.fixture
def baseline(tmp_path: Path) -> tuple[Path, list[tuple[object, ...]]]:
    """A directory with an archive, dead children to merge into it, and a live one."""
    directory = tmp_path / "baseline"
    directory.mkdir()
    clock = Clock()
    for pid in OLD_DEAD:
        run_child(directory, pid, clock, seed=pid)
    compact(directory, is_alive=lambda pid: pid not in OLD_DEAD)
    for pid in [*NEW_DEAD, *ALIVE]:
        run_child(directory, pid, clock, seed=pid)
    return directory, expected_after_death(directory, DEAD)


def merge_steps(baseline: Path, tmp_path: Path) -> list[str]:
    """The checkpoints one merge of the baseline passes, in order."""
    dry_run = tmp_path / "dry-run"
    shutil.copytree(baseline, dry_run)
    steps: list[str] = []
    archive._fault_hook = steps.append
    try:
        compact(dry_run, is_alive=is_alive)
    finally:
        archive._fault_hook = None
    return steps


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], None]]:
    """Arm a crash at the n-th checkpoint from now (0-based)."""

    def arm(n: int) -> None:
        calls = iter(range(n + 1))

        def hook(step: str) -> None:
            if next(calls, n + 1) == n:
                raise Crash(step)

        monkeypatch.setattr(archive, "_fault_hook", hook)

    yield arm
    monkeypatch.setattr(archive, "_fault_hook", None)


def test_merge_passes_every_step_that_can_be_interrupted(
    baseline: tuple[Path, list[tuple[object, ...]]], tmp_path: Path
) -> None:
    """The test seam sees archive writes, the commit, each rename and each unlink."""
    steps = merge_steps(baseline[0], tmp_path)

    assert steps[:2] == ["live_gauges_dropped", "archive_written:counter"]
    assert steps.index("archives_synced") < steps.index("journal_written") < steps.index("journal_committed")
    assert "renamed:gauge_mostrecent_archive.db" in steps
    assert sum(step.startswith("unlinked:") for step in steps) == 2 * 7  # 2 children x 7 merged types
    assert steps[-1] == "journal_removed"


@pytest.mark.parametrize("then", ["recover", "compact", "scrape"])
def test_merge_interrupted_at_any_step_neither_loses_nor_double_counts(
    baseline: tuple[Path, list[tuple[object, ...]]],
    tmp_path: Path,
    crash_at: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
    then: str,
) -> None:
    """After a crash between any two steps, the next recover, compact or scrape makes it exact."""
    source, expected = baseline
    for n, step in enumerate(merge_steps(source, tmp_path)):
        directory = tmp_path / f"crash-{n}"
        shutil.copytree(source, directory)
        crash_at(n)
        with pytest.raises(Crash):
            compact(directory, is_alive=is_alive)
        monkeypatch.setattr(archive, "_fault_hook", None)

        if then == "recover":
            recover(directory)
        elif then == "compact":
            compact(directory, is_alive=is_alive)
        samples = canonical(collect_registry(directory).collect())

        assert samples == expected, f"crash after {step}"
        # A scrape finishes a committed merge; an uncommitted one's work
        # files are invisible to it and left for the next compactor.
        work_suffixes = (".journal",) if then == "scrape" else (".tmp", ".journal")
        work_files = [f.name for f in directory.iterdir() if f.suffix in work_suffixes]
        assert work_files == [], f"crash after {step}"
        if then == "compact":
            assert leftovers(directory, DEAD) == [], f"crash after {step}"


def test_recovery_interrupted_at_any_step_is_finished_by_the_next(
    baseline: tuple[Path, list[tuple[object, ...]]],
    tmp_path: Path,
    crash_at: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash during the roll-forward of a crashed merge is rolled forward again."""
    source, expected = baseline
    steps = merge_steps(source, tmp_path)
    committed = steps.index("journal_committed")
    crashed = tmp_path / "crashed"
    shutil.copytree(source, crashed)
    crash_at(committed)
    with pytest.raises(Crash):
        compact(crashed, is_alive=is_alive)

    for n in range(len(steps) - committed - 1):
        directory = tmp_path / f"twice-{n}"
        shutil.copytree(crashed, directory)
        crash_at(n)
        with pytest.raises(Crash):
            recover(directory)
        monkeypatch.setattr(archive, "_fault_hook", None)

        recover(directory)

        assert canonical(collect_registry(directory).collect()) == expected, f"second crash at {n}"
        assert leftovers(directory, DEAD) == []


def test_every_intermediate_state_is_hidden_from_scrapes(
    baseline: tuple[Path, list[tuple[object, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a merge runs, a scrape cannot take its shared lock."""
    directory, _ = baseline
    checked: list[str] = []

    def scrape_would_block(step: str) -> None:
        fd = os.open(directory / "compaction.lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        checked.append(step)

    monkeypatch.setattr(archive, "_fault_hook", scrape_would_block)
    compact(directory, is_alive=is_alive)

    assert checked[-1] == "journal_removed"


def test_source_file_of_a_reused_pid_survives_recovery(
    baseline: tuple[Path, list[tuple[object, ...]]],
    tmp_path: Path,
    crash_at: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new process that got a merged child's pid keeps its fresh file."""
    source, _ = baseline
    steps = merge_steps(source, tmp_path)
    directory = tmp_path / "reused"
    shutil.copytree(source, directory)
    crash_at(steps.index("journal_committed"))
    with pytest.raises(Crash):
        compact(directory, is_alive=is_alive)
    monkeypatch.setattr(archive, "_fault_hook", None)
    reused = directory / f"counter_{NEW_DEAD[0]}.db"
    reused.unlink()
    run_child(directory, NEW_DEAD[0], Clock(), seed=99, gauge_modes=())

    recover(directory)

    assert reused.exists()


def test_damaged_journal_stops_recovery_instead_of_guessing(tmp_path: Path) -> None:
    """A journal that does not parse is an operator's problem, not silently dropped."""
    (tmp_path / "compaction.journal").write_text(json.dumps({"version": 99}))

    with pytest.raises(ValueError, match="unreadable compaction journal"):
        recover(tmp_path)


COMPACTOR_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from app.metrics import archive, compaction

    directory, kill_at = Path(sys.argv[1]), sys.argv[2]

    def hook(step):
        if step.startswith(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    archive._fault_hook = hook
    compaction.compact(directory)
    """
)


@pytest.mark.parametrize(
    "kill_at", ["archive_written:histogram", "journal_written", "journal_committed", "renamed:", "unlinked:"]
)
def test_compactor_killed_with_sigkill_mid_merge_is_recovered_exactly(tmp_path: Path, kill_at: str) -> None:
    """A real compactor process killed mid-merge: recovery makes the totals exact."""
    pids = run_real_children(tmp_path, 2)
    expected = expected_after_death(tmp_path, pids)

    killed = subprocess.run([sys.executable, "-c", COMPACTOR_SCRIPT, str(tmp_path), kill_at], check=False, timeout=60)

    assert killed.returncode == -signal.SIGKILL
    recover(tmp_path)
    assert canonical(collect_registry(tmp_path).collect()) == expected
    compact(tmp_path)
    assert leftovers(tmp_path, pids) == []
