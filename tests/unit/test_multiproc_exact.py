"""Merges never lower an exposed value: arbitrary floats, merges at random points.

The rule checked against the stock collector over the same observations
(the reference directory, where nothing is ever merged):

- samples whose every input is an integer (buckets, ``_count``, counters
  incremented by whole numbers) equal the stock collector's value exactly;
- every additive sample (``_sum`` included) equals ``math.fsum`` of the
  per-file values the stock collector reads, bit for bit, and the stock
  collector's left-to-right total within the error of that order
  (n ulps of the total).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector

from app.metrics.multiproc import collect_registry, compact
from panic_metrics_client.exact_sum import grow, partials_of
from tests.unit.multiproc_helpers import FIRST_FAKE_PID, SERVICE_TYPES, ZONES, Clock, SimulatedProcess, files_of

SLOTS = 3
amounts = st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False)
whole = st.integers(min_value=0, max_value=10**6).map(float)
step = st.one_of(
    st.tuples(st.just("inc"), st.integers(0, SLOTS - 1), st.sampled_from(SERVICE_TYPES), amounts),
    st.tuples(st.just("inc_whole"), st.integers(0, SLOTS - 1), st.sampled_from(SERVICE_TYPES), whole),
    st.tuples(st.just("observe"), st.integers(0, SLOTS - 1), st.sampled_from(ZONES), amounts),
    st.tuples(st.just("summary"), st.integers(0, SLOTS - 1), st.sampled_from(ZONES), amounts),
    st.tuples(st.just("exit"), st.integers(0, SLOTS - 1), st.just(""), st.just(0.0)),
    st.tuples(st.just("compact"), st.just(0), st.just(""), st.just(0.0)),
    st.tuples(st.just("scrape"), st.just(0), st.just(""), st.just(0.0)),
)
Step = tuple[str, int, str, float]

# The drop the issue found: three _sum values whose total depends on the order of addition.
ORDER_DEPENDENT = [
    ("observe", 0, "downtown", 0.1),
    ("exit", 0, "", 0.0),
    ("observe", 1, "downtown", 0.2),
    ("observe", 2, "downtown", 0.3),
    ("scrape", 0, "", 0.0),
    ("exit", 1, "", 0.0),
    ("compact", 0, "", 0.0),
    ("scrape", 0, "", 0.0),
]

Series = tuple[str, tuple[tuple[str, str], ...]]


def _exposed(directory: Path) -> dict[Series, float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in collect_registry(directory).collect()
        for s in metric.samples
    }


def _per_file_values(files: list[Path]) -> dict[Series, list[float]]:
    values: dict[Series, list[float]] = defaultdict(list)
    for f in files:
        for key, value, _ts, _pos in MmapedDict.read_all_values_from_file(str(f)):
            _metric, name, labels, _help = json.loads(key)
            values[(name, tuple(sorted(labels.items())))].append(value)
    return values


class Run:
    def __init__(self, work: Path, reference: Path) -> None:
        self.work, self.reference = work, reference
        self.clock = Clock()
        self.children: dict[int, SimulatedProcess] = {}
        self.dead: set[int] = set()
        self.next_pid = FIRST_FAKE_PID
        self.whole_only: dict[str, bool] = defaultdict(lambda: True)  # service_type -> only whole increments
        self.last: dict[Series, float] = {}
        self.scrapes = 0

    def child(self, slot: int) -> SimulatedProcess:
        if slot not in self.children:
            self.children[slot] = SimulatedProcess(self.work, self.next_pid, self.clock)
            self.next_pid += 1
        return self.children[slot]

    def apply(self, action: str, slot: int, label: str, amount: float) -> None:
        match action:
            case "inc" | "inc_whole":
                self.whole_only[label] &= action == "inc_whole"
                self.child(slot).inc_requests(label, amount)
            case "observe":
                self.child(slot).observe_response_time(label, amount)
            case "summary":
                self.child(slot).observe_auth_time(label, amount)
            case "exit":
                child = self.children.pop(slot, None)
                if child is not None:
                    child.exit()
                    for f in files_of(self.work, [child.pid]):
                        shutil.copy(f, self.reference / f.name)
                    self.dead.add(child.pid)
            case "compact":
                compact(self.work, is_alive=lambda pid: pid not in self.dead)
            case "scrape":
                self.check()

    def check(self) -> None:
        exposed = _exposed(self.work)
        for series, value in exposed.items():
            if series[0].startswith(("zone_gauge",)):
                continue
            assert value >= self.last.get(series, 0.0), f"{series} went down: {self.last[series]!r} -> {value!r}"
        self.last = exposed
        self.scrapes += 1
        files = [*self.reference.glob("*.db"), *files_of(self.work, [c.pid for c in self.children.values()])]
        stock = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in MultiProcessCollector.merge([str(f) for f in files], accumulate=True)
            for s in metric.samples
        }
        per_file = _per_file_values(files)
        assert exposed.keys() == stock.keys()
        for series, value in exposed.items():
            name, labels = series
            if name.endswith(("_bucket", "_count")) or (
                name == "panic_requests_total" and self.whole_only[dict(labels)["service_type"]]
            ):
                assert value == stock[series], series
            else:
                inputs = per_file[series]
                assert value == math.fsum(inputs), series
                assert math.isclose(value, stock[series], rel_tol=len(inputs) * 2.0**-52, abs_tol=0.0), series


def run(steps: list[Step]) -> int:
    with tempfile.TemporaryDirectory() as work, tempfile.TemporaryDirectory() as reference:
        state = Run(Path(work), Path(reference))
        for action in steps:
            state.apply(*action)
        state.check()
        for slot in list(state.children):
            state.apply("exit", slot, "", 0.0)
        state.apply("compact", 0, "", 0.0)
        state.check()
        return state.scrapes


@settings(max_examples=200, deadline=None)
@given(st.lists(step, min_size=1, max_size=40))
@example(ORDER_DEPENDENT)
def test_exposed_additive_values_never_decrease_and_equal_exact_sums(steps: list[Step]) -> None:
    """Arbitrary float observations, deaths, merges and scrapes in any order: no value ever goes down."""
    assert run(steps) >= 2


def test_order_dependent_float_sum_survives_a_merge_unchanged() -> None:
    """0.1 + 0.2 + 0.3 depends on the order; the exposed _sum does not."""
    assert (0.1 + 0.2) + 0.3 != 0.1 + (0.2 + 0.3)
    assert run(ORDER_DEPENDENT) == 4


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300), max_size=50))
def test_partials_keep_the_exact_sum(values: list[float]) -> None:
    """Growing partials one value at a time loses nothing: fsum of them equals fsum of the inputs."""
    partials: list[float] = []
    for value in values:
        grow(partials, value)
    assert math.fsum(partials) == math.fsum(values)
    assert partials == partials_of(values)
