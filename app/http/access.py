"""Who may read the endpoint: the bind check, bearer and basic credentials, TLS options.

One policy for every path that serves the endpoint (the worker's thread and
`panic-metrics serve-metrics`):

- on a loopback address with no credentials configured, everything is open
  (`make run` needs nothing);
- once a token or a user and password is configured, every path asks for
  them except a bare `/health`, which answers only `{"status": ...}` and
  its status code: container and load-balancer probes rarely carry
  credentials, and "up or not" tells an attacker nothing they cannot learn
  by connecting. The details (version, dependency errors, paths) need
  credentials;
- a non-loopback address with no credentials is refused at start;
- the POST routes always need the bearer token, whatever the address.

Secrets are compared in constant time (`secrets.compare_digest`).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import secrets
import ssl
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.config import Settings
from app.metrics import definitions as m

#: The one path that answers without credentials, with its status only.
OPEN_PATH = "/health"
#: Set in the ASGI scope's state by the middleware: the request carried valid credentials.
AUTHENTICATED = "authenticated"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is reachable only from this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_problem(settings: Settings, host: str) -> str | None:
    """Why serving the endpoint on `host` with these settings is refused; None if it may start."""
    if not is_loopback(host) and not settings.metrics_auth_configured:
        return (
            f"refusing to serve the metrics endpoint on {host} without credentials: set METRICS_AUTH_TOKEN "
            "(or METRICS_AUTH_TOKEN_FILE, or METRICS_AUTH_USERNAME and METRICS_AUTH_PASSWORD), "
            "or bind METRICS_HOST=127.0.0.1"
        )
    if settings.metrics_tls_cert_file is not None and settings.metrics_tls_key_file is not None:
        # Loaded here so a bad file stops the process at start, not the endpoint's thread later.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                settings.metrics_tls_cert_file, settings.metrics_tls_key_file
            )
        except (OSError, ssl.SSLError) as exc:
            return f"METRICS_TLS_CERT_FILE/METRICS_TLS_KEY_FILE: cannot load the certificate and key: {exc}"
    return None


def tls_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's TLS arguments for the configured certificate and key (none: plain HTTP)."""
    if settings.metrics_tls_cert_file is None or settings.metrics_tls_key_file is None:
        return {}
    return {"ssl_certfile": str(settings.metrics_tls_cert_file), "ssl_keyfile": str(settings.metrics_tls_key_file)}


def _same(offered: str, expected: str) -> bool:
    return secrets.compare_digest(offered.encode(), expected.encode())


def bearer_token_valid(settings: Settings, authorization: str | None) -> bool:
    """Whether `authorization` is `Bearer <METRICS_AUTH_TOKEN>`; False when no token is configured."""
    token = settings.metrics_auth_token
    scheme, _, offered = (authorization or "").partition(" ")
    if token is None or scheme.lower() != "bearer":
        return False
    # Only HTTP's own whitespace around the value: a token may end in any other character.
    return _same(offered.strip(" \t"), token.get_secret_value())


def _basic_valid(settings: Settings, authorization: str | None) -> bool:
    username, password = settings.metrics_auth_username, settings.metrics_auth_password
    scheme, _, encoded = (authorization or "").partition(" ")
    if username is None or password is None or scheme.lower() != "basic":
        return False
    try:
        offered_user, _, offered_password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    # Both compared, always: `and` would tell a timing observer which one was wrong.
    user_ok = _same(offered_user, username)
    password_ok = _same(offered_password, password.get_secret_value())
    return user_ok & password_ok


def credentials_valid(settings: Settings, authorization: str | None) -> bool:
    """Whether `authorization` carries the configured token or user and password."""
    return bearer_token_valid(settings, authorization) or _basic_valid(settings, authorization)


def _challenge(settings: Settings) -> str:
    schemes = []
    if settings.metrics_auth_token is not None:
        schemes.append('Bearer realm="panic-metrics"')
    if settings.metrics_auth_password is not None:
        schemes.append('Basic realm="panic-metrics", charset="UTF-8"')
    return ", ".join(schemes)


class AccessControl:
    """ASGI middleware: every request needs credentials once they are configured, except a bare /health."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw: bytes | None = dict(scope["headers"]).get(b"authorization")
        if not self.settings.metrics_auth_configured:
            authenticated = True
        else:
            authenticated = credentials_valid(self.settings, raw.decode("latin-1") if raw else None)
        scope.setdefault("state", {})[AUTHENTICATED] = authenticated
        if authenticated or scope["path"] == OPEN_PATH:
            await self.app(scope, receive, send)
            return
        m.ENDPOINT_UNAUTHORIZED.labels(reason="invalid" if raw else "missing").inc()
        body = json.dumps({"error": "unauthorized", "detail": "send the endpoint's bearer token or basic credentials"})
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", _challenge(self.settings).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
