"""The exposition of files several processes wrote: every series contiguous, in the stock collector's order.

OpenMetrics forbids a series split by another one's samples (a histogram's
``_sum`` of one label set between another's buckets); prometheus_client's
``MultiProcessCollector`` groups each series since 0.24. Ours must do the
same on every merge path: live files, archives read as their exact
partials, and both together.

Every value written here is a multiple of 1/4, so every sum is exact in any
order: the stock collector's left-to-right totals equal our exact ones, and
the two expositions can be compared sample by sample, values included.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from app.metrics.archive import archive_name, partials_name
from app.metrics.multiproc import collect_registry, compact
from tests.unit.multiproc_helpers import FIRST_FAKE_PID, Clock, run_child, run_real_children

#: What makes one sample in a family: its name, labels and value, in order.
Listed = list[tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]]


def listed(metrics: Iterable[Metric]) -> Listed:
    return [(m.name, m.type, [(s.name, tuple(sorted(s.labels.items())), s.value) for s in m.samples]) for m in metrics]


def stock_in_name_order(directory: Path) -> Listed:
    """The stock collector over the directory's files read in name order (its own glob order is the filesystem's)."""
    return listed(MultiProcessCollector.merge(sorted(str(f) for f in directory.glob("*.db")), accumulate=True))


def series_runs(samples: Iterable[tuple[str, dict[str, str]]]) -> list[tuple[tuple[str, str], ...]]:
    """The label sets (without ``le``/``quantile``) of consecutive samples, one entry per run."""
    runs: list[tuple[tuple[str, str], ...]] = []
    for _name, labels in samples:
        series = tuple(sorted((k, v) for k, v in labels.items() if k not in ("le", "quantile")))
        if not runs or runs[-1] != series:
            runs.append(series)
    return runs


def check_exposition(directory: Path) -> None:
    """Ours equals the stock collector's, in order; parses as strict OpenMetrics; each series contiguous, le sorted."""
    ours = listed(collect_registry(directory).collect())
    assert ours == stock_in_name_order(directory)

    text = openmetrics_exposition.generate_latest(collect_registry(directory)).decode()
    assert text.endswith("# EOF\n")
    families = list(parse_openmetrics(text))  # strict: raises on a split series or unordered buckets
    assert {f.name for f in families} == {name for name, _type, _samples in ours}
    for family in families:
        runs = series_runs((s.name, s.labels) for s in family.samples)
        assert len(runs) == len(set(runs)), f"{family.name}: a series is split: {runs}"
        if family.type == "histogram":
            for series in set(runs):
                bounds = [
                    float(s.labels["le"])
                    for s in family.samples
                    if s.name.endswith("_bucket") and series_runs([(s.name, s.labels)])[0] == series
                ]
                assert bounds == sorted(bounds)
                assert bounds[-1] == float("inf")

    # The text format 0.0.4 carries the same samples, in the same order.
    text_samples = [
        (s.name, tuple(sorted(s.labels.items())), s.value)
        for f in parse_text(generate_latest(collect_registry(directory)).decode())
        for s in f.samples
    ]
    assert text_samples == [sample for _name, _type, samples in ours for sample in samples]


def test_interleaved_label_sets_of_every_type_come_out_contiguous_on_every_merge_path(tmp_path: Path) -> None:
    """Live files, then archives plus live files, then archives alone: the stock order, each series together."""
    directory = tmp_path
    clock = Clock()
    pids = [FIRST_FAKE_PID + i for i in range(6)]
    # Each child writes its label sets in another order (seeded), so that
    # files interleave the series of every counter, histogram, summary and gauge.
    for seed, pid in enumerate(pids[:4]):
        run_child(directory, pid, clock, seed)
    check_exposition(directory)

    dead = set(pids[:3])
    report = compact(directory, is_alive=lambda pid: pid not in dead)
    assert sorted(report.merged_pids) == sorted(dead)
    assert (directory / partials_name("histogram")).exists()
    check_exposition(directory)  # archives read as exact partials, beside one live child

    for seed, pid in enumerate(pids[4:], start=7):  # new label orders after the merge
        run_child(directory, pid, clock, seed)
    check_exposition(directory)

    dead |= set(pids[3:])
    compact(directory, is_alive=lambda pid: pid not in dead)
    assert not [f for f in directory.glob("histogram_*.db") if f.name != archive_name("histogram")]
    check_exposition(directory)  # archives (and the pid-labelled `all` gauges) alone


def test_files_of_real_processes_and_their_archive_come_out_contiguous(tmp_path: Path) -> None:
    """Real children (counter, histogram, livesum and mostrecent gauges) exit; before and after their merge."""
    first = run_real_children(tmp_path, 3)
    check_exposition(tmp_path)
    assert sorted(compact(tmp_path).merged_pids) == sorted(first)
    run_real_children(tmp_path, 2)
    check_exposition(tmp_path)
