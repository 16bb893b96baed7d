"""Settings: defaults that need no server, normalised URLs, one clear line for a bad value."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.config import Settings
from tests.support.worker import ROOT


def test_defaults_need_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing configured the worker runs on SQLite and the filesystem broker."""
    for name in ("DATABASE_URL", "BROKER_URL", "METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.database_url.startswith("sqlite:///")
    assert settings.broker_url == "filesystem://"
    assert settings.metrics_port == 8001


@pytest.mark.parametrize(
    ("given_url", "normalised"),
    [
        ("postgres://u:p@db/pm", "postgresql+psycopg://u:p@db/pm"),
        ("postgresql://u:p@db/pm", "postgresql+psycopg://u:p@db/pm"),
        ("postgresql+psycopg://u:p@db/pm", "postgresql+psycopg://u:p@db/pm"),
        ("sqlite:///var/x.sqlite3", "sqlite:///var/x.sqlite3"),
    ],
)
def test_database_url_is_normalised_to_psycopg3(given_url: str, normalised: str) -> None:
    """The usual PostgreSQL URL spellings all use the psycopg 3 driver."""
    assert Settings(database_url=given_url).database_url == normalised


@given(st.integers().filter(lambda port: not 0 <= port <= 65535))
def test_out_of_range_port_is_refused(port: int) -> None:
    """A port outside 0-65535 is a configuration error."""
    with pytest.raises(ValueError, match="metrics_port"):
        Settings(metrics_port=port)


@pytest.mark.parametrize(
    ("variable", "bad_value"),
    [
        ("METRICS_PORT", "eighty"),
        ("DATABASE_URL", "mysql://db/pm"),
        ("MAX_ZONES", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("METRICS_ENABLED", "perhaps"),
    ],
)
def test_bad_value_stops_the_process_with_one_line_naming_the_variable(variable: str, bad_value: str) -> None:
    """A bad environment variable fails at start with one line that names it."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", variable: bad_value},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert variable in lines[0]
