"""A real `celery worker` (prefork) with its metrics endpoint, started by a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import ROOT, LoggedProcess
from tests.support.services import free_port, wait_until


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET a /metrics page and parse it into {(sample name, labels): value}."""
    # Generous: on a loaded 2-core machine a scrape can wait behind a merge's fsyncs.
    response = httpx.get(url, timeout=30)
    response.raise_for_status()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """One sample's value, 0 when the series does not exist (yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


class Worker(LoggedProcess):
    """`celery worker` in a subprocess, with the environment a test gives it."""

    def __init__(self, env: Mapping[str, str], workdir: Path, *, concurrency: int = 2, extra: tuple[str, ...] = ()):
        # No --pool: the app's worker_pool (prefork, workers/pool.py) is what `make run` gets too.
        self.port = free_port()
        self.hostname = f"test-{self.port}@localhost"
        self.workdir = workdir
        self.health_url = f"http://127.0.0.1:{self.port}/health"
        self.multiproc_dir = Path(env.get("PROMETHEUS_MULTIPROC_DIR", workdir / "prometheus_multiproc"))
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "worker",
            "--concurrency",
            str(concurrency),
            "--queues",
            "events,scheduled",
            "--hostname",
            self.hostname,
            "--without-mingle",
            "--without-gossip",
            *extra,
        ]
        worker_env = {
            "METRICS_PORT": str(self.port),
            "METRICS_HOST": "127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": str(self.multiproc_dir),
            "DEAD_LETTER_DIR": str(workdir / "dead_letter"),
            "QUARANTINE_DIR": str(workdir / "quarantine"),
            **env,
        }
        super().__init__(argv, worker_env, workdir / f"worker-{self.port}.log")

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def start(self, timeout: float = 60) -> Worker:
        self.start_process()
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> Worker:
        """Wait for the started process's endpoint to answer (several workers can start at once, then wait)."""
        wait_until(self._ready, timeout=timeout, what=f"worker endpoint on {self.port} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"worker exited with {self.process.returncode}; log:\n{self.log()[-4000:]}")
        try:
            # 503 is an answer too: the endpoint is up, a dependency is down.
            return httpx.get(self.health_url, timeout=5).status_code in {200, 503}
        except httpx.HTTPError:
            return False

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        return scrape(self.metrics_url)

    def children(self) -> list[int]:
        """Pids of the pool's child processes."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the main process and its children: a machine losing power, as far as Celery knows."""
        if self.process is None:
            return
        for pid in self.children():
            os.kill(pid, signal.SIGKILL)
        super().kill()


def embedded_environment(directory: Path) -> dict[str, str]:
    """The settings of the embedded default (SQLite, filesystem broker) under `directory`, database migrated."""
    env = {
        "BROKER_URL": "filesystem://",
        "BROKER_FOLDER": str(directory / "broker"),
        "DATABASE_URL": f"sqlite:///{directory / 'panic_metrics.sqlite3'}",
    }
    migrate_env = {**os.environ, **env, "PROMETHEUS_MULTIPROC_DIR": str(directory / "migrate_multiproc")}
    subprocess.run([sys.executable, "-m", "app.cli", "migrate"], cwd=ROOT, env=migrate_env, check=True)
    return env


@contextmanager
def standalone_endpoint(
    workdir: Path, *, prefix: Sequence[str] = (), timeout: float = 30, what: str = "standalone endpoint"
) -> Iterator[tuple[str, Path]]:
    """`panic-metrics serve-metrics` compacting a directory of its own, which workers may share.

    `prefix` runs it under another command (e.g. `unshare` for a pid
    namespace of its own). Yields its /metrics URL and the directory.
    """
    shared = workdir / "shared_multiproc"
    shared.mkdir()
    port = free_port()
    env = {
        "PROMETHEUS_MULTIPROC_DIR": str(shared),
        "METRICS_PORT": str(port),
        "MULTIPROC_COMPACT_INTERVAL_SECONDS": "0.5",
    }
    argv = [*prefix, sys.executable, "-m", "app.cli", "serve-metrics"]
    endpoint = LoggedProcess(argv, env, workdir / "endpoint.log")
    endpoint.start_process()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_until(lambda: _answers(url), timeout=timeout, what=what)
        yield url, shared
    finally:
        endpoint.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
