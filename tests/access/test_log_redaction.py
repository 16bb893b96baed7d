"""No secret in logs: URL passwords and configured secrets are masked in every log line, wherever they sit."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine

from app.config import get_settings
from app.db.session import session_scope
from app.http.server import EndpointServer
from app.jobs import refresh_health
from app.logs import MASK, configure_logging, redact, redact_json, url_secrets
from tests.support.services import free_port

BROKER_PASSWORD = "brokerpw-7Qz!x"
DATABASE_PASSWORD = "dbpw-3Kd#e9"
REDIS_PASSWORD = "redispw-c4V%2F"  # percent-encoded in the URL: "c4V/" once decoded
ALL_PASSWORDS = (BROKER_PASSWORD, DATABASE_PASSWORD, REDIS_PASSWORD, "redispw-c4V/")

# Passwords as people pick them: printable, no '*' (the mask itself), at least 4 characters.
passwords = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs",), exclude_characters="*"),
    min_size=4,
)


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The test configures the real JSON handler (writing to the captured stderr); put logging back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def read_lines(capfd: pytest.CaptureFixture[str]) -> tuple[str, list[dict[str, object]]]:
    err = capfd.readouterr().err
    return err, [json.loads(line) for line in err.splitlines() if line.startswith("{")]


@settings(deadline=None)
@given(password=passwords, user=st.sampled_from(["", "metrics", "default"]))
def test_a_url_password_never_survives_redaction(password: str, user: str) -> None:
    """Any password, written percent-encoded in a URL, is gone from the URL and from free text that repeats it."""
    url = f"redis://{user}:{quote(password, safe='')}@redis.internal:6379/0"
    found = url_secrets(url)
    for text in (url, f"cannot connect to {url}", f"auth failed with {password} for {user}"):
        masked = redact(text, found)
        assert password not in masked
        assert quote(password, safe="") not in masked
    assert "redis.internal:6379/0" in redact(url, found)


@pytest.mark.usefixtures("restored_logging")
def test_every_part_of_a_record_is_masked(capfd: pytest.CaptureFixture[str]) -> None:
    """Message, %-arguments, extra fields and the traceback of a failing connection: no password in the line."""
    configure_logging("INFO", secrets={DATABASE_PASSWORD})
    database = f"postgresql://metrics:{DATABASE_PASSWORD}@db:5432/pm"
    log = logging.getLogger("tests.redaction")
    log.warning("cannot connect to %s", database, extra={"url": database, "nested": {"urls": [database]}})
    try:
        raise ConnectionError(f"connection to {database} failed: password={DATABASE_PASSWORD}")
    except ConnectionError:
        log.exception("database down")
    err, lines = read_lines(capfd)
    assert DATABASE_PASSWORD not in err
    assert len(lines) == 2
    assert lines[0]["message"] == f"cannot connect to postgresql://metrics:{MASK}@db:5432/pm"
    assert lines[0]["url"] == f"postgresql://metrics:{MASK}@db:5432/pm"
    assert "ConnectionError" in str(lines[1]["exc_info"])


@pytest.mark.usefixtures("restored_logging")
def test_the_health_check_and_the_start_up_log_show_no_password(capfd: pytest.CaptureFixture[str]) -> None:
    """The real code paths with passwords in every URL and nothing answering: the start-up line and the probes.

    The endpoint logs its broker and database at start; the health refresh
    logs each dependency it cannot reach with the error. The same masking
    keeps the refresh's JSON report clean.
    """
    dead = free_port()
    settings = get_settings().model_copy(
        update={
            "broker_url": f"redis://metrics:{BROKER_PASSWORD}@127.0.0.1:{dead}/0",
            "redis_url": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{dead}/1",
            "database_url": f"postgresql+psycopg://metrics:{DATABASE_PASSWORD}@127.0.0.1:{dead}/pm",
        }
    )
    configure_logging("DEBUG", secrets=(BROKER_PASSWORD, DATABASE_PASSWORD, "redispw-c4V/", REDIS_PASSWORD))
    EndpointServer("127.0.0.1", free_port(), settings)  # logs its start-up line; not started
    engine = create_engine(settings.database_url, connect_args={"connect_timeout": 2})
    result = refresh_health(
        settings=settings,
        engine=engine,
        session_factory=lambda: session_scope(engine),
        queues=("events",),
    )
    err, lines = read_lines(capfd)
    for password in ALL_PASSWORDS:
        assert password not in err
        assert password not in json.dumps(redact_json(result.as_dict(), ALL_PASSWORDS))
    messages = {str(line["message"]) for line in lines}
    assert {"metrics endpoint starting", "dependency down", "health probe failed"} <= messages
    start = next(line for line in lines if line["message"] == "metrics endpoint starting")
    assert start["broker"] == f"redis://metrics:{MASK}@127.0.0.1:{dead}/0"
    assert result.detail["report"]["dependencies"] == {"broker": False, "database": False, "redis": False}


@pytest.mark.usefixtures("restored_logging")
def test_a_record_that_cannot_be_formatted_is_still_logged_masked(capfd: pytest.CaptureFixture[str]) -> None:
    """A bad format string (one argument short) must not raise into the caller, and its arguments are masked."""
    configure_logging("INFO", secrets={BROKER_PASSWORD})
    logging.getLogger("tests.redaction").warning("%s then %s", f"redis://u:{BROKER_PASSWORD}@h/0")  # noqa: PLE1206 - the point
    err, lines = read_lines(capfd)
    assert BROKER_PASSWORD not in err
    assert len(lines) == 1
