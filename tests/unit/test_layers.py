"""The import contracts (pyproject.toml, [tool.importlinter]) hold, and they do catch a break.

`make lint` runs them too; here they run under pytest, and on a copy of the
code with a forbidden import injected, to show each contract can fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.worker import ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the packages under `tree` with the project's contracts."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "client" / "src")])}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", str(ROOT / "pyproject.toml")],
        cwd=tree,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the project's packages, to break on purpose."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=ignore)
    shutil.copytree(ROOT / "workers", tmp_path / "workers", ignore=ignore)
    shutil.copytree(ROOT / "client" / "src", tmp_path / "client" / "src", ignore=ignore)
    return tmp_path


def inject(module: Path, line: str) -> None:
    """Append an import to a module of the copy."""
    module.write_text(module.read_text() + f"\n{line}\n")


def test_the_import_contracts_hold() -> None:
    """Every contract is kept by the code as it is."""
    done = lint_imports(ROOT)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_upward_import_breaks_the_layers(tree: Path) -> None:
    """The metrics layer importing a service (app.jobs) is reported, with the import that does it."""
    inject(tree / "app" / "metrics" / "counting.py", "import app.jobs")

    done = lint_imports(tree)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "app.metrics is not allowed to import app.jobs" in done.stdout
    assert "app.metrics.counting -> app.jobs" in done.stdout


def test_a_client_importing_the_worker_breaks_the_layers(tree: Path) -> None:
    """The client distribution must never need the worker's packages."""
    inject(tree / "client" / "src" / "panic_metrics_client" / "messages.py", "import workers.celery_app")

    done = lint_imports(tree)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "panic_metrics_client is not allowed to import workers" in done.stdout


def test_a_task_module_reaching_the_web_stack_is_reported(tree: Path) -> None:
    """A pool child must not load FastAPI, even through another module."""
    inject(tree / "app" / "dead_letters.py", "import fastapi")

    done = lint_imports(tree)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "workers.tasks is not allowed to import fastapi" in done.stdout


def test_a_cycle_between_services_is_reported(tree: Path) -> None:
    """Services may import each other, but never in a cycle (store <- ingest, then store -> ingest)."""
    inject(tree / "app" / "store.py", "import app.ingest")

    done = lint_imports(tree)

    assert done.returncode == 1, done.stdout + done.stderr
    assert "No cycles are allowed in app." in done.stdout
