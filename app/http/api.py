"""The platform's metrics API, served beside /metrics: the JSON summaries app teams already use.

Thin routes over app.summaries and app.jobs (its health path is the one
/health answer, app.http.health). Query parameters are validated by
FastAPI: a bad one gets a 422 whose `detail[].loc` names it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from app.http.access import bearer_token_valid
from app.http.dependencies import EngineDep, SessionDep, SettingsDep
from app.jobs import refresh_health
from app.logs import redact_json
from app.metrics.housekeeping import scrape
from app.summaries import business_summary, performance_summary

router = APIRouter(prefix="/api/v1/metrics", tags=["metrics API"])

_ALERTMANAGER_TIMEOUT_SECONDS = 5.0
Hours = Annotated[int, Query(ge=1, le=24 * 366, description="How many hours back from now")]
Subject = Annotated[str | None, Query(min_length=1, max_length=128)]


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


@router.get("/business", summary="Panic requests, auth, subscriptions, credits and prank rate")
def business(session: SessionDep, hours: Hours = 24) -> dict[str, Any]:
    """Business figures of the last `hours`, from the events (and the daily archive past retention)."""
    return business_summary(session, now=datetime.now(UTC), hours=hours)


@router.get("/performance", summary="Zone and firm performance from the snapshots")
def performance(
    session: SessionDep, firm_id: Subject = None, zone: Subject = None, hours: Hours = 12
) -> dict[str, Any]:
    """Per zone and firm over the last `hours`; `zone` or `firm_id` narrows to one, with its windows."""
    return performance_summary(session, now=datetime.now(UTC), hours=hours, zone=zone, firm_id=firm_id)


def _alert(alert: dict[str, Any]) -> dict[str, Any]:
    labels, annotations = alert.get("labels", {}), alert.get("annotations", {})
    return {
        "name": labels.get("alertname"),
        "severity": labels.get("severity"),
        "state": alert.get("status", {}).get("state"),
        "starts_at": alert.get("startsAt"),
        "summary": annotations.get("summary"),
        "labels": labels,
        "annotations": annotations,
    }


@router.get("/alerts", summary="Active alerts, from Alertmanager's v2 API")
def alerts(settings: SettingsDep) -> Any:
    """Active, unsilenced alerts; 503 with a JSON error when Alertmanager is not configured or not reachable."""
    if not settings.alertmanager_url:
        return _error(503, "alertmanager_not_configured", "ALERTMANAGER_URL is not set")
    url = f"{settings.alertmanager_url.rstrip('/')}/api/v2/alerts"
    try:
        response = httpx.get(
            url,
            params={"active": "true", "silenced": "false", "inhibited": "false"},
            timeout=_ALERTMANAGER_TIMEOUT_SECONDS,
        )
        response.raise_for_status()
        found = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return _error(503, "alertmanager_unreachable", f"{url}: {type(exc).__name__}")
    active = [_alert(alert) for alert in found if isinstance(alert, dict)]
    return {"count": len(active), "alerts": active}


@router.get("/prometheus", response_class=Response, summary="The Prometheus exposition, as /metrics")
def prometheus(request: Request) -> Response:
    """What /metrics serves, in the format the Accept header asks for."""
    body, content_type = scrape(request.app.state.housekeeper, request.headers.get("accept"))
    return Response(content=body, media_type=content_type)


@router.post("/update-cache-metrics", summary="Run the health refresh now")
def update_cache_metrics(
    settings: SettingsDep,
    engine: EngineDep,
    authorization: Annotated[str | None, Header(description="Bearer METRICS_AUTH_TOKEN: always required")] = None,
) -> Any:
    """Refresh the health gauges at once (no once-per-window claim); always needs the bearer token.

    A write costs a round of probes on every dependency, so it is never open,
    not even on loopback, and basic credentials (meant for readers such as
    Prometheus) do not grant it.
    """
    if settings.metrics_auth_token is None:
        return _error(403, "forbidden", "POST routes are disabled until METRICS_AUTH_TOKEN is set")
    if not bearer_token_valid(settings, authorization):
        return _error(401, "unauthorized", "send 'Authorization: Bearer <METRICS_AUTH_TOKEN>'")
    result = refresh_health(settings=settings, engine=engine, claim=False)
    return redact_json(result.as_dict())
