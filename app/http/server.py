"""The composition root of the HTTP side: builds the app a worker host serves, and serves it.

/metrics (the multiprocess exposition, app.metrics), the one /health
(app.http.health) and the JSON API (app.http.api), behind one access policy
(app.http.access). Served by uvicorn in a thread of the worker's main process
(workers/lifecycle.py), or on its own with `panic-metrics serve-metrics`
(one per host, sharing the multiprocess directory).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response

from app import __version__
from app.config import Settings, get_settings
from app.forksafe import ForkSafeRequests
from app.http import api, health
from app.http.access import AccessControl, exposure_problem, tls_options
from app.metrics import counting, multiproc_dir
from app.metrics.housekeeping import Housekeeper, scrape
from app.metrics.multiproc import prepare_directory
from app.metrics.writers import require_values_in_directory
from app.store import resolve_attempt

log = logging.getLogger(__name__)

_housekeeper: Housekeeper | None = None


def housekeeper() -> Housekeeper:
    """This process's keeper of the multiprocess directory (created on first use, not started)."""
    global _housekeeper  # noqa: PLW0603 - one per process, shared by the endpoint and the worker signals
    if _housekeeper is None:
        interval = get_settings().multiproc_compact_interval_seconds
        # The store tells the keeper whether a dead child's attempt committed.
        _housekeeper = Housekeeper(multiproc_dir(), interval, resolve=resolve_attempt)
    return _housekeeper


def create_api(
    settings: Settings | None = None,
    *,
    consuming: Callable[[], dict[str, Any]] | None = None,
    disk: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """The host's ASGI app, behind the access policy; `consuming` and `disk` are a worker's checks for /health.

    `consuming` is the consuming probe's status, `disk` the disk gate's (whether
    the worker stopped consuming because its metrics directory is full).
    """
    counting.initialise_fixed_series()  # this process's files: scrapes show 0 before the first event
    app = FastAPI(title="panic-metrics", version=__version__)
    app.add_middleware(AccessControl, settings=settings or get_settings())
    # Outermost (added last): the request's thread work and its metric updates
    # are never forked half-way into a pool child (app.forksafe).
    app.add_middleware(ForkSafeRequests)
    app.state.housekeeper = housekeeper()
    app.state.consuming_check = consuming
    app.state.metrics_disk_check = disk

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics of every worker process")
    def metrics(request: Request) -> Response:
        body, content_type = scrape(request.app.state.housekeeper, request.headers.get("accept"))
        return Response(content=body, media_type=content_type)

    app.include_router(health.router)
    app.include_router(api.router)
    return app


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

    def __init__(
        self,
        host: str,
        port: int,
        settings: Settings | None = None,
        *,
        consuming: Callable[[], dict[str, Any]] | None = None,
        disk: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        settings = settings or get_settings()
        refuse_unsafe_exposure(settings, host)
        _log_start(settings, host, port)
        config = uvicorn.Config(
            create_api(settings, consuming=consuming, disk=disk),
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            **tls_options(settings),
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
    require_values_in_directory()
    _log_start(settings, host, port)
    keeper = housekeeper()
    prepare_directory(keeper.path)
    keeper.start()
    uvicorn.run(create_api(settings), host=host, port=port, log_config=None, access_log=False, **tls_options(settings))
