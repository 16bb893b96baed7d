"""The one health answer of a worker host, served at /health (and at the JSON API's /api/v1/metrics/health).

`status` is this host's own: 200 when the broker and the database answer, the
metrics directory takes new files and, in a worker, a probe went through
the broker to a pool child lately (`checks.consuming`) and it has not stopped
consuming for a full metrics disk (`checks.metrics_disk`, `state: full`); 503
otherwise. The rest is the health refresh's report (app.health): dependencies, connections,
Redis, queue depths. A dependency the host does not need to work
(Alertmanager, a separate Redis) shows in `dependencies` without failing the
status. Without credentials a bare /health answers its status only
(app.http.access), and probes only what decides it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app import __version__
from app.broker import check_broker
from app.db.session import check_database
from app.health import collect_health
from app.http.access import AUTHENTICATED
from app.http.dependencies import EngineDep, SettingsDep
from app.logs import redact_json
from app.metrics import multiproc_dir
from app.metrics.multiproc import writable

router = APIRouter()

#: The paths of the one health answer: operators' and probes' /health, and the JSON API's name for it.
HEALTH_PATHS = ("/health", "/api/v1/metrics/health")
SUMMARY = "Broker, database, metrics directory and consuming; dependencies, connections, Redis and queues"


def health(request: Request, settings: SettingsDep, engine: EngineDep) -> JSONResponse:
    """This host's health; the details need credentials once they are configured."""
    authenticated = request.scope["state"].get(AUTHENTICATED, False)
    # The open answer probes only what decides the status, so an anonymous
    # caller cannot make the host ask Redis, Alertmanager and every queue.
    report = collect_health(settings=settings, engine=engine) if authenticated else None
    checks = dict(report.checks) if report else {"broker": check_broker(settings), "database": check_database(engine)}
    directory = multiproc_dir()
    checks["metrics_directory"] = {"ok": writable(directory), "path": str(directory)}
    consuming = getattr(request.app.state, "consuming_check", None)
    if consuming is not None:
        checks["consuming"] = consuming()
    disk = getattr(request.app.state, "metrics_disk_check", None)
    if disk is not None:
        # A worker that stopped consuming for want of room says so: `state: full`.
        checks["metrics_disk"] = disk()
    healthy = all(check["ok"] for check in checks.values())
    status = "ok" if healthy else "degraded"
    body: dict[str, Any] = {"status": status}  # the open liveness answer: no details without credentials
    if report is not None:
        body = {**report.as_dict(), "status": status, "version": __version__, "checks": checks}
    return JSONResponse(redact_json(body), status_code=200 if healthy else 503)


for _path in HEALTH_PATHS:
    router.add_api_route(_path, health, methods=["GET"], summary=SUMMARY, response_class=JSONResponse)
