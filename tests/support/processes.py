"""A subprocess whose output goes to a log file: the shape of every real process a test starts."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class LoggedProcess:
    """Runs `argv` from `cwd` (the repository root) with `env` over the test's, output appended to `log_path`.

    `inherit=False` gives it `env` alone: an operator's fresh shell.
    """

    stop_timeout = 30.0

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        *,
        inherit: bool = True,
        cwd: Path = ROOT,
    ) -> None:
        self.argv = list(argv)
        self.env = {**os.environ, **env} if inherit else dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start_process(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log, stderr=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the process."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `stop_timeout`."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None
