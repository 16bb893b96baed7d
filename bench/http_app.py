"""The web app bench/http_cost.py loads: a few platform-like routes, instrumented as BENCH_HTTP_MODE says.

    BENCH_HTTP_MODE=bare|instrumentator|ours uvicorn bench.http_app:app --no-access-log

- `bare`: no middleware;
- `instrumentator`: prometheus-fastapi-instrumentator, its defaults, /metrics exposed;
- `ours`: `PanicMetricsMiddleware`, the client configured by `PANIC_METRICS_*` alone.

Every mode counts the requests it served by status in a plain ASGI wrapper
outside everything (an integer increment), and at shutdown prints one line
`bench-served {json}`: those counts and, for `ours`, the client's stats()
(sent, spooled, dropped), so the bench can tell what was served from what
was stored.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODE = os.environ.get("BENCH_HTTP_MODE", "bare")
SERVED: Counter[int] = Counter()


class PanicIn(BaseModel):
    service_type: str
    zone: str


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    client = None
    if MODE == "ours":
        from panic_metrics_client import get_client

        # Started now rather than on the first request: it resends what an earlier process spooled.
        client = get_client()
    yield
    # The client has closed by now (its SIGTERM hook runs before uvicorn's), so its stats are final.
    report = {"served": dict(SERVED), "client": client.stats() if client is not None else None}
    print("bench-served " + json.dumps(report), file=sys.stderr, flush=True)


api = FastAPI(lifespan=lifespan)


@api.get("/api/v1/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@api.get("/api/v1/panic/{request_id}")
async def panic(request_id: int) -> dict[str, Any]:
    return {"request_id": request_id, "status": "accepted", "zone": "downtown"}


@api.post("/api/v1/panic", status_code=201)
async def create_panic(body: PanicIn) -> dict[str, Any]:
    return {"request_id": 1, "service_type": body.service_type, "zone": body.zone}


@api.get("/api/v1/firms/{firm_id}/zones/{zone}")
async def firm_zone(firm_id: str, zone: str) -> dict[str, Any]:
    return {"firm_id": firm_id, "zone": zone, "responders": 4}


@api.get("/api/v1/panic/{request_id}/escalate")
async def escalate(request_id: int) -> dict[str, Any]:
    # A handled failure: a 500 response, no traceback in the log.
    raise HTTPException(status_code=500, detail=f"escalation of {request_id} failed")


if MODE == "instrumentator":
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator().instrument(api).expose(api)
elif MODE == "ours":
    from panic_metrics_client import PanicMetricsMiddleware

    api.add_middleware(PanicMetricsMiddleware)
elif MODE != "bare":
    raise SystemExit(f"BENCH_HTTP_MODE: bare, instrumentator or ours, not {MODE!r}")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """`api`, with every HTTP response counted by status."""
    if scope["type"] != "http":
        await api(scope, receive, send)
        return

    async def counting(message: Message) -> None:
        if message["type"] == "http.response.start":
            SERVED[int(message["status"])] += 1
        await send(message)

    await api(scope, receive, counting)
