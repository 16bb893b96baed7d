"""A real `celery beat` process, started by a test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.worker import ROOT


class Beat:
    """`celery beat` in a subprocess with its own schedule file and the environment a test gives it."""

    def __init__(self, env: Mapping[str, str], workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / "beat.log"
        self.env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus_multiproc"), **env}
        self.argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.celery_app",
            "beat",
            "--schedule",
            str(workdir / "celerybeat-schedule"),
            "--max-interval",
            "1",
            "--loglevel",
            "INFO",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Beat:
        (self.workdir / "prometheus_multiproc").mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None
