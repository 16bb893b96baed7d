"""Simulated pool children and reference answers for the multiprocess tests.

A simulated child writes its files through prometheus_client's own
``MultiProcessValue`` with a chosen pid, so the files are exactly what a real
child with that pid writes; no real process is needed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import prometheus_client.metrics
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from app.metrics.archive import parse_db_name

GAUGE_MODES = (
    "all",
    "liveall",
    "min",
    "livemin",
    "max",
    "livemax",
    "sum",
    "livesum",
    "mostrecent",
    "livemostrecent",
)
SERVICE_TYPES = ("security", "medical", "fire")
ZONES = ("downtown", "harbour", "other")
USER_TYPES = ("registered_user", "guest")
BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0)

#: Pids above the kernel's pid_max (32768 here, at most 2**22) never belong
#: to a real process, so a stray liveness check cannot mistake them.
FIRST_FAKE_PID = 5_000_000

#: (metric name, type, help, sample name, sorted labels, value)
SampleRow = tuple[str, str, str, str, tuple[tuple[str, str], ...], float]


class Clock:
    """Strictly increasing timestamps for ``mostrecent`` gauges.

    Gauge.set stamps time.time(), which two simulated children can share
    within one clock tick; on a tie even the stock answer depends on glob
    order, so the tests give every set its own instant.
    """

    def __init__(self) -> None:
        self._now = 1_700_000_000.0

    def time(self) -> float:
        self._now += 1.0
        return self._now


class SimulatedProcess:
    """One pool child with pid ``pid``, writing into ``directory``."""

    def __init__(self, directory: Path, pid: int, clock: Clock) -> None:
        self.pid = pid
        self.directory = directory
        self._clock = clock
        self._value_class = values.MultiProcessValue(process_identifier=lambda: pid)
        with self._active():
            self.requests = Counter("panic_requests", "Panic requests.", ["service_type"], registry=None)
            self.response_time = Histogram(
                "panic_response_time_seconds",
                "Time to answer a panic request.",
                ["zone"],
                buckets=BUCKETS,
                registry=None,
            )
            self.auth_time = Summary("auth_check_seconds", "Time to check credentials.", ["user_type"], registry=None)
            self.gauges = {
                mode: Gauge(
                    f"zone_gauge_{mode}",
                    f"A gauge in {mode} mode.",
                    ["zone"],
                    multiprocess_mode=mode,
                    registry=None,  # type: ignore[arg-type]
                )
                for mode in GAUGE_MODES
            }

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        # The library picks its value class and directory per process at
        # import; a simulated child swaps them in only while it acts.
        with (
            mock.patch.object(values, "ValueClass", self._value_class),
            mock.patch.dict(os.environ, {"PROMETHEUS_MULTIPROC_DIR": str(self.directory)}),
            mock.patch.object(prometheus_client.metrics, "time", SimpleNamespace(time=self._clock.time)),
        ):
            yield

    def inc_requests(self, service_type: str, amount: float) -> None:
        with self._active():
            self.requests.labels(service_type).inc(amount)

    def observe_response_time(self, zone: str, seconds: float) -> None:
        with self._active():
            self.response_time.labels(zone).observe(seconds)

    def observe_auth_time(self, user_type: str, seconds: float) -> None:
        with self._active():
            self.auth_time.labels(user_type).observe(seconds)

    def set_gauge(self, mode: str, zone: str, value: float) -> None:
        with self._active():
            self.gauges[mode].labels(zone).set(value)

    def exit(self) -> None:
        """Close the files, as the end of the process would."""
        self._value_class.close_all_files()  # type: ignore[attr-defined]


def run_child(directory: Path, pid: int, clock: Clock, seed: int, *, gauge_modes: Iterable[str] = GAUGE_MODES) -> None:
    """A child that handles a few tasks and exits: every metric kind, varied."""
    child = SimulatedProcess(directory, pid, clock)
    for i in range(3):
        n = seed + i
        child.inc_requests(SERVICE_TYPES[n % 3], 1 + n % 4)
        child.observe_response_time(ZONES[n % 3], (n % 40) * 7.25)
        child.observe_auth_time(USER_TYPES[n % 2], (n % 9) / 4)
        for j, mode in enumerate(gauge_modes):
            child.set_gauge(mode, ZONES[(n + j) % 3], (n * 3 + j) % 17 - 8.5)
    child.exit()


def canonical(metrics: Iterable[Metric]) -> list[SampleRow]:
    """Samples in an order-free form that compares exactly."""
    return sorted(
        (m.name, m.type, m.documentation, s.name, tuple(sorted(s.labels.items())), s.value)
        for m in metrics
        for s in m.samples
    )


def stock_samples(files: Iterable[Path]) -> list[SampleRow]:
    """What the stock collector reports for these files, merged by nothing."""
    return canonical(MultiProcessCollector.merge([str(f) for f in files], accumulate=True))


def files_of(directory: Path, pids: Iterable[int]) -> list[Path]:
    wanted = {str(pid) for pid in pids}
    return [
        f
        for f in sorted(directory.glob("*.db"))
        if (parsed := parse_db_name(f.name)) is not None and parsed[1] in wanted
    ]


def expected_after_death(directory: Path, dead: Iterable[int]) -> list[SampleRow]:
    """Stock answer once ``dead`` are marked dead: copy, mark_process_dead, read."""
    dead = list(dead)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp)
        for f in directory.glob("*.db"):
            shutil.copy(f, copy / f.name)
        for pid in dead:
            mark_process_dead(pid, str(copy))
        return stock_samples(copy.glob("*.db"))


def leftovers(directory: Path, dead: Iterable[int]) -> list[str]:
    """Files a finished compaction must not leave: work files, journal, dead sources."""
    dead_files = [f.name for f in files_of(directory, dead) if not f.name.startswith("gauge_all_")]
    work = [f.name for f in directory.iterdir() if f.name.endswith(".tmp") or f.name == "compaction.journal"]
    return sorted(dead_files + work)


CHILD_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from app.metrics.guards import take_lease
    take_lease(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))  # as importing app.metrics does
    from prometheus_client import Counter, Gauge, Histogram
    requests = Counter("panic_requests", "Panic requests.", ["service_type"])
    response = Histogram("panic_response_time_seconds", "Time to answer.", ["zone"],
                         buckets=(1.0, 5.0, 30.0, 60.0, 300.0))
    busy = Gauge("worker_busy", "Tasks in progress.", multiprocess_mode="livesum")
    subscriptions = Gauge("active_subscriptions", "Active subscriptions.", ["plan"],
                          multiprocess_mode="mostrecent")
    seed = int(sys.argv[1])
    busy.inc()
    for i in range(5):
        requests.labels(("security", "medical", "fire")[(seed + i) % 3]).inc()
        response.labels(("downtown", "harbour")[i % 2]).observe((seed * 5 + i) * 2.5)
    subscriptions.labels("gold").set(seed)
    """
)


def run_real_children(directory: Path, count: int) -> list[int]:
    """Start real Python processes that write metrics there and exit; their pids."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": root}
    pids = []
    for seed in range(count):
        proc = subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, str(seed)], env=env)
        assert proc.wait(timeout=60) == 0
        pids.append(proc.pid)
    return pids


class _ReadOnce:
    """A collector answering with what the multiprocess directory held when it was made."""

    def __init__(self) -> None:
        self._metrics = list(MultiProcessCollector(None).collect())

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def scrape() -> CollectorRegistry:
    """A fresh registry over PROMETHEUS_MULTIPROC_DIR, read once: what a scrape would see now."""
    registry = CollectorRegistry()
    registry.register(_ReadOnce())
    return registry
