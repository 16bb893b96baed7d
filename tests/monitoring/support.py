"""A real Prometheus and a real Alertmanager (Debian's binaries), each on a free port with its own storage."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from monitoring.generator import thresholds
from tests.support.processes import ROOT, LoggedProcess
from tests.support.services import free_port, wait_until

RULE_FILES = (ROOT / "monitoring/prometheus/rules/recording.yml", ROOT / "monitoring/prometheus/rules/alerts.yml")


def binary(*names: str) -> str:
    """The first of `names` on PATH (Debian names Alertmanager `prometheus-alertmanager`)."""
    for name in names:
        if found := shutil.which(name):
            return found
    raise AssertionError(f"none of {names} is installed: run `make services` (scripts/test-services.sh)")


class Prometheus(LoggedProcess):
    """`prometheus` scraping `targets` as the worker job (and itself) every second, evaluating `rule_files`."""

    stop_timeout = 15.0

    def __init__(
        self,
        workdir: Path,
        *,
        targets: Iterable[str] = (),
        rule_files: Iterable[Path] = RULE_FILES,
        alertmanager: str | None = None,
        worker_job: Mapping[str, Any] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                # `worker_job` in place of `targets`: a job of its own (e.g. prometheus.yml's, with file_sd).
                dict(worker_job)
                if worker_job is not None
                else {"job_name": thresholds.WORKER_JOB, "static_configs": [{"targets": list(targets)}]},
                # Itself, as the real prometheus.yml does: a target outside the worker job.
                {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]},
            ],
        }
        if alertmanager is not None:
            config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        argv = [
            binary("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        super().__init__(argv, {}, workdir / "prometheus.log")
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def start(self) -> Prometheus:
        self.start_process()
        wait_until(self._ready, timeout=30, what=f"prometheus on {self.port} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"prometheus exited; log:\n{self.log()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str) -> httpx.Response:
        """An instant query; the caller reads the status (400 on a parse error) and the JSON."""
        return self.client.post("/api/v1/query", data={"query": expr})

    def series_names(self) -> set[str]:
        """Every metric name Prometheus holds samples of."""
        response = httpx.get(f"{self.url}/api/v1/label/__name__/values", timeout=30)
        response.raise_for_status()
        return set(response.json()["data"])

    def kill(self) -> None:
        self.client.close()
        super().kill()

    def stop(self) -> None:
        self.client.close()
        super().stop()

    def targets(self, job: str = thresholds.WORKER_JOB) -> dict[str, str]:
        """The active targets of `job`: instance -> health (up, down, unknown)."""
        response = httpx.get(f"{self.url}/api/v1/targets", params={"state": "active"}, timeout=10)
        response.raise_for_status()
        active = response.json()["data"]["activeTargets"]
        return {t["labels"]["instance"]: t["health"] for t in active if t["labels"]["job"] == job}

    def targets_up(self) -> bool:
        """Every scrape target has been scraped successfully."""
        active = httpx.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return bool(active) and all(target["health"] == "up" for target in active)


class Alertmanager(LoggedProcess):
    """`prometheus-alertmanager` with `config`, no clustering, its own storage."""

    stop_timeout = 15.0

    def __init__(self, workdir: Path, config: Mapping[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "alertmanager.yml").write_text(yaml.safe_dump(dict(config)))
        argv = [
            binary("prometheus-alertmanager", "alertmanager"),
            f"--config.file={workdir / 'alertmanager.yml'}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip port: a single instance
            "--log.level=warn",
        ]
        super().__init__(argv, {}, workdir / "alertmanager.log")

    def start(self) -> Alertmanager:
        self.start_process()
        wait_until(self._ready, timeout=30, what=f"alertmanager on {self.port} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"alertmanager exited; log:\n{self.log()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def shipped_worker_job(workdir: Path) -> dict[str, Any]:
    """prometheus.yml's worker job, scraping every second, its password file one under `workdir`."""
    config = yaml.safe_load((ROOT / "monitoring/prometheus/prometheus.yml").read_text())
    (job,) = (job for job in config["scrape_configs"] if job["job_name"] == thresholds.WORKER_JOB)
    password = workdir / "metrics_scrape_password"
    password.write_text("not-checked-on-loopback\n")  # a loopback endpoint asks for no credentials
    job["basic_auth"]["password_file"] = str(password)
    job |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    return dict(job)


def write_targets(workdir: Path, job: Mapping[str, Any], addresses: Iterable[str]) -> Path:
    """List `addresses` in a targets file where `job`'s file_sd pattern, relative to the config file, looks."""
    (pattern,) = job["file_sd_configs"][0]["files"]
    targets_file = workdir / Path(pattern).parent / "workers.yml"
    targets_file.parent.mkdir(exist_ok=True)
    targets_file.write_text(yaml.safe_dump([{"targets": sorted(addresses)}]))
    return targets_file


def scraping_by_file_sd(workdir: Path, addresses: Iterable[str]) -> Prometheus:
    """A Prometheus (not started) running prometheus.yml's own worker job, its targets file listing `addresses`."""
    workdir.mkdir(parents=True, exist_ok=True)
    job = shipped_worker_job(workdir)
    write_targets(workdir, job, addresses)
    return Prometheus(workdir, worker_job=job)
