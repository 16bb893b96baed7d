"""Two compactors and a scrape at once never count a child twice."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from app.metrics.multiproc import CompactionReport, collect_registry, compact
from tests.unit.multiproc_helpers import (
    FIRST_FAKE_PID,
    GAUGE_MODES,
    Clock,
    canonical,
    expected_after_death,
    leftovers,
    run_child,
)

CHILDREN = range(FIRST_FAKE_PID, FIRST_FAKE_PID + 24)
ROUNDS = 6
# live* gauges vanish when their child dies and `all` ones keep a series per
# pid; without them the totals are the same before, during and after every
# merge, so any scrape that differs has seen half a merge.
STEADY_MODES = [m for m in GAUGE_MODES if not m.startswith("live")]


def populate(directory: Path) -> list[tuple[object, ...]]:
    clock = Clock()
    for pid in CHILDREN:
        run_child(directory, pid, clock, seed=pid, gauge_modes=STEADY_MODES)
    return expected_after_death(directory, CHILDREN)


def test_two_compactors_and_a_scraper_never_double_count(tmp_path: Path) -> None:
    """Each dead child is merged by exactly one compactor; every scrape sees exact totals."""
    expected = populate(tmp_path)
    dead: set[int] = set()
    batches = [list(CHILDREN)[i::ROUNDS] for i in range(ROUNDS)]
    start_round = threading.Barrier(3, timeout=60)  # a guard against deadlock, not a measure
    reports: list[CompactionReport] = []
    scrapes: list[list[tuple[object, ...]]] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def compactor() -> None:
        try:
            for _ in range(ROUNDS):
                start_round.wait()
                reports.append(compact(tmp_path, is_alive=lambda pid: pid not in dead))
        except BaseException as exc:  # noqa: BLE001 - a thread's failure is re-raised by the asserts below
            errors.append(exc)
            start_round.abort()

    def scraper() -> None:
        try:
            while not done.is_set():
                scrapes.append(canonical(collect_registry(tmp_path).collect()))
        except BaseException as exc:  # noqa: BLE001 - as above
            errors.append(exc)

    threads = [threading.Thread(target=compactor, daemon=True) for _ in range(2)]
    threads.append(threading.Thread(target=scraper, daemon=True))
    for thread in threads:
        thread.start()
    try:
        for batch in batches:
            dead.update(batch)  # these children exit; both compactors race to merge them
            start_round.wait()
        for thread in threads[:2]:
            thread.join()
    finally:
        done.set()
        threads[2].join()

    assert errors == []
    merged = [pid for report in reports for pid in report.merged_pids]
    assert sorted(merged) == list(CHILDREN)  # each child merged once, by one compactor
    assert scrapes
    assert all(scrape == expected for scrape in scrapes)
    assert canonical(collect_registry(tmp_path).collect()) == expected
    assert leftovers(tmp_path, CHILDREN) == []


COMPACTOR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from app.metrics.multiproc import compact

    report = compact(Path(sys.argv[1]), is_alive=lambda pid: False)
    print(" ".join(map(str, report.merged_pids)))
    """
)


def test_compactor_processes_racing_merge_each_child_once(tmp_path: Path) -> None:
    """Two processes compacting one directory (worker and standalone endpoint) split the work."""
    expected = populate(tmp_path)

    racers = [
        subprocess.Popen([sys.executable, "-c", COMPACTOR, str(tmp_path)], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [racer.communicate(timeout=60)[0] for racer in racers]

    assert [racer.returncode for racer in racers] == [0, 0]
    assert sorted(int(pid) for out in outputs for pid in out.split()) == list(CHILDREN)
    assert canonical(collect_registry(tmp_path).collect()) == expected
