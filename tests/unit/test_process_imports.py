"""What a process loads at import: a pool child no web stack, and prometheus_client pointed at the directory first.

Each case runs in a fresh interpreter: this test process has imported everything already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.worker import ROOT

#: What a pool child imports: the task modules (the Celery app comes with them).
POOL_CHILD_MODULES = ("workers.tasks", "workers.tasks.base", "workers.tasks.events", "workers.tasks.scheduled")
WEB_STACK = ("fastapi", "uvicorn", "starlette", "app.http")


def run_python(code: str, cwd: Path, **env: str | None) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter from `cwd`, with `env` over this environment (None: unset)."""
    environment = {key: value for key, value in os.environ.items() if key not in env}
    environment |= {key: value for key, value in env.items() if value is not None}
    environment["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_pool_child_imports_no_web_stack(tmp_path: Path) -> None:
    """Importing every task module loads neither FastAPI, uvicorn, Starlette nor the HTTP composition root."""
    code = f"""
        import importlib, json, sys
        for name in {POOL_CHILD_MODULES!r}:
            importlib.import_module(name)
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {{"fastapi", "uvicorn", "starlette"}}
                                or m == "app.http" or m.startswith("app.http."))))
    """
    done = run_python(code, tmp_path)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_the_probe_sees_the_web_stack_when_it_is_imported(tmp_path: Path) -> None:
    """The check above can fail: importing the composition root shows FastAPI and uvicorn in sys.modules."""
    done = run_python(
        "import sys, app.http.server; print(all(m in sys.modules for m in ('fastapi', 'uvicorn', 'app.http')))",
        tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"


@pytest.mark.parametrize("entry_point", ["workers.celery_app", "app.cli"])
def test_entry_points_set_the_directory_before_prometheus_client_loads(entry_point: str, tmp_path: Path) -> None:
    """With no PROMETHEUS_MULTIPROC_DIR, the Celery app and the CLI set it from the settings, before prometheus_client.

    So prometheus_client picks its multiprocess value class, and every metric
    of the process goes to files in that directory.
    """
    code = f"""
        import importlib, json, os
        importlib.import_module({entry_point!r})
        from prometheus_client import values
        print(json.dumps({{
            "multiprocess": values.ValueClass is not values.MutexValue,
            "directory": os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
        }}))
    """
    done = run_python(code, tmp_path, PROMETHEUS_MULTIPROC_DIR=None)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "multiprocess": True,
        "directory": str((tmp_path / "var" / "prometheus_multiproc").resolve()),
    }


def test_metrics_refuse_a_prometheus_client_imported_without_the_directory(tmp_path: Path) -> None:
    """prometheus_client imported before the variable was set: app.metrics stops the process with one clear error."""
    done = run_python("import prometheus_client, app.metrics", tmp_path, PROMETHEUS_MULTIPROC_DIR=None)

    assert done.returncode != 0
    assert "RuntimeError: prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set" in done.stderr


def test_metrics_accept_a_prometheus_client_imported_with_the_directory(tmp_path: Path) -> None:
    """With the variable set before anything (as Compose and the tests do), import order does not matter."""
    directory = tmp_path / "multiproc"
    done = run_python(
        "import prometheus_client, app.metrics; print(app.metrics.multiproc_dir())",
        tmp_path,
        PROMETHEUS_MULTIPROC_DIR=str(directory),
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(directory)
    assert directory.is_dir()
