"""A real `celery beat` process, started by a test."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from tests.support.processes import LoggedProcess


class Beat(LoggedProcess):
    """`celery beat` in a subprocess with its own schedule file and the environment a test gives it."""

    stop_timeout = 15.0

    def __init__(self, env: Mapping[str, str], workdir: Path) -> None:
        self.workdir = workdir
        argv = [
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
        beat_env = {"PROMETHEUS_MULTIPROC_DIR": str(workdir / "prometheus_multiproc"), **env}
        super().__init__(argv, beat_env, workdir / "beat.log")

    def start(self) -> Beat:
        (self.workdir / "prometheus_multiproc").mkdir(parents=True, exist_ok=True)
        self.start_process()
        return self
