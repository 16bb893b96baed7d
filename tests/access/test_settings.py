"""Access settings: the bind check, credentials compared right, secret files, the renamed token."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from app.config import Settings
from app.http.access import credentials_valid, exposure_problem, is_loopback
from tests.support.processes import ROOT

# Tokens and passwords as operators make them: any printable text without spaces at the ends.
secrets_text = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_categories=("Cs",)), min_size=1
)


def settings(**changes: object) -> Settings:
    return Settings(_env_file=None, **changes)  # type: ignore[call-arg]


# Validated once; the property tests copy it with their credentials (no re-validation per example).
BASE = settings()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.53", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104 - the case under test
        ("::", False),
        ("10.0.0.5", False),
        ("metrics.internal", False),
    ],
)
def test_loopback_addresses_are_told_apart(host: str, loopback: bool) -> None:
    """Only addresses this machine alone can reach count as loopback; a host name never does."""
    assert is_loopback(host) is loopback


def test_a_public_address_needs_credentials() -> None:
    """0.0.0.0 with nothing set is refused with a line naming the variables; a token or a user lifts it."""
    problem = exposure_problem(settings(), "0.0.0.0")  # noqa: S104 - the case under test
    assert problem is not None
    for variable in ("METRICS_AUTH_TOKEN", "METRICS_AUTH_TOKEN_FILE", "METRICS_AUTH_USERNAME", "METRICS_HOST"):
        assert variable in problem
    assert exposure_problem(settings(), "127.0.0.1") is None
    assert exposure_problem(settings(metrics_auth_token="t0ken"), "0.0.0.0") is None  # noqa: S104
    with_user = settings(metrics_auth_username="prometheus", metrics_auth_password="pa55word")
    assert exposure_problem(with_user, "0.0.0.0") is None  # noqa: S104


def test_a_bad_certificate_is_refused_at_start(tmp_path: Path) -> None:
    """A certificate that cannot be loaded stops the process at start, naming the TLS variables."""
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    broken = settings(metrics_tls_cert_file=tmp_path / "cert.pem", metrics_tls_key_file=tmp_path / "key.pem")
    problem = exposure_problem(broken, "127.0.0.1")
    assert problem is not None
    assert "METRICS_TLS_CERT_FILE" in problem


@hypothesis_settings(deadline=None)
@given(token=secrets_text, offered=secrets_text)
def test_the_bearer_token_is_accepted_exactly(token: str, offered: str) -> None:
    """Any token: accepted when offered exactly, refused otherwise, never confused with basic credentials."""
    configured = BASE.model_copy(update={"metrics_auth_token": SecretStr(token)})
    assert credentials_valid(configured, f"Bearer {token}")
    assert credentials_valid(configured, f"Bearer {offered}") is (offered == token)
    assert not credentials_valid(configured, basic("anyone", token))
    assert not credentials_valid(configured, None)


@hypothesis_settings(deadline=None)
@given(user=secrets_text.filter(lambda u: ":" not in u), password=secrets_text, offered=secrets_text)
def test_basic_credentials_need_both_the_user_and_the_password(user: str, password: str, offered: str) -> None:
    """Any user and password: accepted together, refused with either one wrong, never as a bearer token."""
    update = {"metrics_auth_username": user, "metrics_auth_password": SecretStr(password)}
    configured = BASE.model_copy(update=update)
    assert credentials_valid(configured, basic(user, password))
    assert credentials_valid(configured, basic(user, offered)) is (offered == password)
    assert credentials_valid(configured, basic(offered, password)) is (offered == user)
    assert not credentials_valid(configured, f"Bearer {password}")
    assert not credentials_valid(configured, "Basic not-base64!")


def test_secrets_are_read_from_files(tmp_path: Path) -> None:
    """`*_FILE` reads the secret from a file, trailing newline stripped; both forms at once is an error."""
    (tmp_path / "token").write_text("from-a-file\n")
    (tmp_path / "password").write_text("pa55word\n")
    configured = settings(
        metrics_auth_token_file=tmp_path / "token",
        metrics_auth_username="prometheus",
        metrics_auth_password_file=tmp_path / "password",
    )
    assert configured.metrics_auth_token == SecretStr("from-a-file")
    assert configured.metrics_auth_password == SecretStr("pa55word")
    with pytest.raises(ValidationError, match="not both"):
        settings(metrics_auth_token="t0ken", metrics_auth_token_file=tmp_path / "token")
    with pytest.raises(ValidationError, match="cannot read"):
        settings(metrics_auth_token_file=tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValidationError, match="empty"):
        settings(metrics_auth_token_file=tmp_path / "empty")


def test_half_configured_pairs_are_refused() -> None:
    """A user without a password, or a certificate without a key, is a configuration error."""
    with pytest.raises(ValidationError, match="METRICS_AUTH_USERNAME and METRICS_AUTH_PASSWORD"):
        settings(metrics_auth_username="prometheus")
    with pytest.raises(ValidationError, match="METRICS_TLS_CERT_FILE and METRICS_TLS_KEY_FILE"):
        settings(metrics_tls_cert_file="cert.pem")


@pytest.mark.parametrize(
    ("variables", "named"),
    [
        ({"METRICS_API_TOKEN": "old-token"}, "METRICS_API_TOKEN"),
        ({"METRICS_AUTH_TOKEN_FILE": "/nonexistent/token"}, "METRICS_AUTH_TOKEN_FILE"),
        ({"METRICS_TLS_KEY_FILE": "key.pem"}, "METRICS_TLS_CERT_FILE"),
    ],
)
def test_access_misconfiguration_stops_the_process_with_one_line(variables: dict[str, str], named: str) -> None:
    """The renamed METRICS_API_TOKEN, an unreadable secret file, half a TLS pair: one line at start, naming it."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve-metrics"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **variables},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert named in lines[0]
    assert "old-token" not in lines[0]
