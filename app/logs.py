"""JSON logs: one object per line, with the task name and id when inside a task, and no secrets.

Secrets are masked in one place, a filter on the one handler every logger
(ours, Celery's, kombu's, uvicorn's) propagates to: the password of any URL
(`scheme://user:password@host`), `password=`/`token=` pairs, and the
literal values of the configured secrets (URL passwords, the endpoint's
token and password), wherever they appear: message, arguments, extra
fields, traceback. `redact_json` applies the same masking to what /health
returns.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote, urlsplit

from pythonjsonlogger.json import JsonFormatter

from app.config import get_settings

MASK = "***"
# scheme://[user]:password@ — the password part, up to the last @ before the host.
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s@/]+)(?P<tail>@)")
# password=…, pwd=…, token=…, secret=… in DSNs and query strings.
_KEY_VALUE = re.compile(r"(?P<head>\b(?:password|passwd|pwd|token|secret)=)(?P<secret>[^\s&;,'\"]+)", re.IGNORECASE)
# Attributes every LogRecord has; anything else came in through `extra`.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_MIN_SECRET_LENGTH = 4  # masking a one- or two-character "secret" would mangle every line


def url_secrets(url: str | None) -> set[str]:
    """The password of `url`, as written and decoded; empty if it has none."""
    if not url:
        return set()
    try:
        password = urlsplit(url).password
    except ValueError:
        return set()
    return {password, unquote(password)} if password else set()


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL passwords, key=value secrets and each of `secrets` replaced by `***`."""
    text = _URL_PASSWORD.sub(lambda match: f"{match['head']}{MASK}{match['tail']}", text)
    text = _KEY_VALUE.sub(lambda match: f"{match['head']}{MASK}", text)
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET_LENGTH:
            text = text.replace(secret, MASK)
    return text


def redact_json(value: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of a JSON-ready value with every string redacted (default secrets: the configured ones)."""
    known = configured_secrets() if secrets is None else set(secrets)
    if isinstance(value, str):
        return redact(value, known)
    if isinstance(value, dict):
        return {key: redact_json(item, known) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(item, known) for item in value]
    return value


def configured_secrets() -> set[str]:
    """The secret values in the settings: URL passwords, the endpoint's token and password."""
    settings = get_settings()
    found: set[str] = set()
    for url in (settings.database_url, settings.broker_url, settings.redis_url, settings.alertmanager_url):
        found |= url_secrets(url)
    for secret in (settings.metrics_auth_token, settings.metrics_auth_password):
        if secret is not None:
            found.add(secret.get_secret_value())
    return found


class RedactSecrets(logging.Filter):
    """Masks secrets in every part of a record before it is formatted."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = set(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        # A filter that raised would break the logging call itself (Handler.emit
        # catches formatting errors, filters run before it): never raise here.
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not take the caller down
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message, self.secrets)
        record.args = None
        if record.exc_info:
            # The formatter would render the traceback from exc_info; render it here, masked.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRIBUTES and isinstance(value, str | dict | list | tuple):
                setattr(record, key, redact_json(value, self.secrets))
        return True


class TaskContext(logging.Filter):
    """Adds `task_name` and `task_id` of the running Celery task, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Imported here so app/ keeps no import-time dependency on Celery.
        from celery import current_task

        task = current_task
        if task and task.request and task.request.id:
            record.task_name = task.name
            record.task_id = task.request.id
        return True


def configure_logging(level: str = "INFO", secrets: Iterable[str] | None = None) -> None:
    """Send every log record to stderr as one JSON object per line, secrets masked.

    `secrets`: literal values to mask besides URL passwords; default: the configured ones.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{processName}{message}",
            style="{",
            rename_fields={"levelname": "level", "asctime": "time", "name": "logger", "processName": "process"},
            timestamp=False,
        )
    )
    handler.addFilter(TaskContext())
    handler.addFilter(RedactSecrets(configured_secrets() if secrets is None else secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Celery logs every task's receipt and result with its arguments: at our
    # volume that is noise, and the arguments hold customer ids. DEBUG keeps them.
    quiet = "DEBUG" if level == "DEBUG" else "WARNING"
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(quiet)
