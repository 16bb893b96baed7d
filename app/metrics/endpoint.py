"""The worker host's HTTP endpoint: /metrics for Prometheus, /health for operators.

Runs in a thread of the worker's main process, or on its own with
`panic-metrics serve-metrics` (one per host, sharing the multiprocess directory).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app import __version__
from app.broker import check_broker
from app.config import Settings, get_settings
from app.db.session import check_database
from app.forksafe import ForkSafeRequests
from app.logs import redact_json
from app.metrics import counting
from app.metrics.access import AUTHENTICATED, AccessControl, exposure_problem, tls_options
from app.metrics.housekeeping import Housekeeper, HousekeepingCollector, timed
from app.metrics.multiproc import collect_registry, prepare_directory, writable

log = logging.getLogger(__name__)


def multiproc_dir() -> Path:
    """The directory every worker process of this host writes its metrics to."""
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


_housekeeper: Housekeeper | None = None

#: Set by a worker serving this endpoint: whether it consumes (workers/lifecycle.py).
consuming_check: Callable[[], dict[str, Any]] | None = None


def housekeeper() -> Housekeeper:
    """This process's keeper of the multiprocess directory (created on first use, not started)."""
    global _housekeeper  # noqa: PLW0603 - one per process, shared by the endpoint and the worker signals
    if _housekeeper is None:
        interval = get_settings().multiproc_compact_interval_seconds
        _housekeeper = Housekeeper(multiproc_dir(), interval)
    return _housekeeper


def scrape() -> bytes:
    """The text exposition of every process's metrics, from a fresh registry, and the directory's own."""
    started = time.perf_counter()
    keeper = housekeeper()
    registry = collect_registry(keeper.path)
    registry.register(HousekeepingCollector(keeper))
    body = generate_latest(registry)
    timed(keeper, started)
    return body


def create_api(settings: Settings | None = None) -> FastAPI:
    """The endpoint's ASGI app, behind the access policy of app.metrics.access."""
    counting.initialise_fixed_series()  # this process's files: scrapes show 0 before the first event
    api = FastAPI(title="panic-metrics", version=__version__)
    api.add_middleware(AccessControl, settings=settings or get_settings())
    # Outermost (added last): the request's thread work and its metric updates
    # are never forked half-way into a pool child (app.forksafe).
    api.add_middleware(ForkSafeRequests)

    @api.get("/metrics", response_class=Response, summary="Prometheus metrics of every worker process")
    def metrics() -> Response:
        return Response(content=scrape(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/health", summary="Broker and database reachable, metrics directory writable")
    def health(request: Request) -> JSONResponse:
        checks = {
            "broker": check_broker(),
            "database": check_database(),
            "metrics_directory": {"ok": writable(multiproc_dir()), "path": str(multiproc_dir())},
        }
        if consuming_check is not None:
            checks["consuming"] = consuming_check()
        healthy = all(check["ok"] for check in checks.values())
        body = {"status": "ok" if healthy else "degraded", "version": __version__, "checks": checks}
        if not request.scope["state"].get(AUTHENTICATED, False):
            body = {"status": body["status"]}  # the open liveness answer: no details without credentials
        return JSONResponse(redact_json(body), status_code=200 if healthy else 503)

    from app.api import router  # the metrics API's JSON summaries; imported here as it imports this module

    api.include_router(router)
    return api


def refuse_unsafe_exposure(settings: Settings, host: str) -> None:
    """Stop the process with one line if the endpoint may not be served on `host` (public and no credentials)."""
    problem = exposure_problem(settings, host)
    if problem is not None:
        sys.exit(f"panic-metrics: {problem}")


def _log_start(settings: Settings, host: str, port: int) -> None:
    # Which broker and database this host talks to: the first question when
    # numbers look wrong. The logging filter masks any password in them.
    log.info(
        "metrics endpoint starting",
        extra={
            "host": host,
            "port": port,
            "tls": bool(tls_options(settings)),
            "auth": settings.metrics_auth_configured,
            "broker": settings.broker_url,
            "database": settings.database_url,
        },
    )


class EndpointServer:
    """The endpoint served by uvicorn in a daemon thread of the current process."""

    def __init__(self, host: str, port: int, settings: Settings | None = None) -> None:
        settings = settings or get_settings()
        refuse_unsafe_exposure(settings, host)
        _log_start(settings, host, port)
        config = uvicorn.Config(
            create_api(settings), host=host, port=port, log_config=None, access_log=False, **tls_options(settings)
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="metrics-endpoint", daemon=True)

    def start(self) -> None:
        """Start serving; returns at once."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the server to finish and wait briefly for it."""
        self._server.should_exit = True
        self._thread.join(timeout=5)


def serve_forever(host: str, port: int) -> None:
    """Serve the endpoint in the foreground (the standalone command), compacting the directory it shares."""
    settings = get_settings()
    refuse_unsafe_exposure(settings, host)
    _log_start(settings, host, port)
    keeper = housekeeper()
    prepare_directory(keeper.path)
    keeper.start()
    uvicorn.run(create_api(settings), host=host, port=port, log_config=None, access_log=False, **tls_options(settings))
