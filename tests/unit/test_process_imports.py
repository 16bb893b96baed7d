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


#: How each process that writes metrics starts, after prometheus_client was imported without the variable.
SIGNAL = "from celery import signals; import workers.lifecycle; signals.{}.send(sender=None)"
WRITER_STARTS = {
    "worker main process": SIGNAL.format("worker_init"),
    "pool child": SIGNAL.format("worker_process_init"),
    "standalone endpoint": "from app.http.server import serve_forever; serve_forever('127.0.0.1', 0)",
    "task body in a shell": "from workers.lifecycle import consuming_probe; consuming_probe('probed')",
}

#: What `celery status`, `inspect`, `call` or Flower load: the app, and a publish, with no metric written.
INSPECT_AND_PUBLISH = """
    import prometheus_client, workers.celery_app, workers.tasks.events, workers.tasks.scheduled
    from prometheus_client import values
    print(values.ValueClass is values.MutexValue)
"""


def test_a_process_that_only_inspects_or_publishes_runs_with_prometheus_client_imported_first(tmp_path: Path) -> None:
    """prometheus_client imported before the variable was set (`celery` does, through Flower): the app loads."""
    done = run_python(INSPECT_AND_PUBLISH, tmp_path, PROMETHEUS_MULTIPROC_DIR=None)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"  # untouched: Flower's own metrics stay Flower's


@pytest.mark.parametrize("start", WRITER_STARTS.values(), ids=WRITER_STARTS.keys())
def test_a_writer_refuses_series_already_kept_in_its_own_memory(start: str, tmp_path: Path) -> None:
    """prometheus_client imported without the directory and a series recorded: a writer stops, naming the variable."""
    code = f"""
        import prometheus_client, app.metrics
        from app.metrics import definitions as m
        m.CACHE_REQUESTS.labels(result="hit").inc()
        {start}
    """
    done = run_python(code, tmp_path, PROMETHEUS_MULTIPROC_DIR=None)

    assert done.returncode != 0
    assert "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set" in done.stderr
    assert "cache_requests in its own memory" in done.stderr
    assert "set PROMETHEUS_MULTIPROC_DIR before the process starts" in done.stderr


#: The standalone endpoint serves once started; its fresh-shell start is tested on a real one (test_fresh_shell.py).
STARTS_THAT_RETURN = {name: start for name, start in WRITER_STARTS.items() if name != "standalone endpoint"}


@pytest.mark.parametrize("start", STARTS_THAT_RETURN.values(), ids=STARTS_THAT_RETURN.keys())
def test_a_writer_started_after_prometheus_client_writes_to_the_directory(start: str, tmp_path: Path) -> None:
    """prometheus_client imported without the directory, nothing recorded yet: a writer's series go to the directory."""
    code = f"""
        import json, os, prometheus_client, app.metrics
        from prometheus_client import values
        from app.metrics import definitions as m
        {start}
        m.CACHE_REQUESTS.labels(result="hit").inc()
        print(json.dumps({{
            "multiprocess": values.ValueClass is not values.MutexValue,
            "files": sorted(os.listdir(app.metrics.multiproc_dir())),
        }}))
    """
    done = run_python(code, tmp_path, PROMETHEUS_MULTIPROC_DIR=None)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["multiprocess"] is True
    assert any(name.startswith("counter_") for name in result["files"])


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
