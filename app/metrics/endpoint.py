"""The worker host's HTTP endpoint: /metrics for Prometheus, /health for operators.

Runs in a thread of the worker's main process, or on its own with
`panic-metrics serve-metrics` (one per host, sharing the multiprocess directory).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import text

from app import __version__
from app.broker import check_broker
from app.db.session import get_engine

log = logging.getLogger(__name__)


def multiproc_dir() -> Path:
    """The directory every worker process of this host writes its metrics to."""
    return Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def scrape() -> bytes:
    """The text exposition of every process's metrics, from a fresh registry."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir()))
    return generate_latest(registry)


def _check_database() -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable; the reason is reported
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "latency_seconds": round(time.perf_counter() - started, 4)}


def create_api() -> FastAPI:
    """The endpoint's ASGI app."""
    api = FastAPI(title="panic-metrics", version=__version__)

    @api.get("/metrics", response_class=Response, summary="Prometheus metrics of every worker process")
    def metrics() -> Response:
        return Response(content=scrape(), media_type=CONTENT_TYPE_LATEST)

    @api.get("/health", summary="Broker and database reachability")
    def health() -> JSONResponse:
        checks = {"broker": check_broker(), "database": _check_database()}
        healthy = all(check["ok"] for check in checks.values())
        body = {"status": "ok" if healthy else "degraded", "version": __version__, "checks": checks}
        return JSONResponse(body, status_code=200 if healthy else 503)

    return api


class EndpointServer:
    """The endpoint served by uvicorn in a daemon thread of the current process."""

    def __init__(self, host: str, port: int) -> None:
        config = uvicorn.Config(create_api(), host=host, port=port, log_config=None, access_log=False)
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
    """Serve the endpoint in the foreground (the standalone command)."""
    uvicorn.run(create_api(), host=host, port=port, log_config=None, access_log=False)
