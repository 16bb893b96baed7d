"""The ASGI middleware on a real FastAPI app: requests summed by route template, exceptions untouched, WebSockets."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, WebSocket

from panic_metrics_client import Client, PanicMetricsMiddleware
from panic_metrics_client.messages import BATCH_TASK
from tests.client.conftest import ClientFactory
from tests.client.test_client import delivered


class PlatformError(Exception):
    """The app's own exception, which must reach the caller unchanged."""


def build_app(client: Client) -> FastAPI:
    app = FastAPI()
    app.add_middleware(PanicMetricsMiddleware, client=client)

    @app.get("/api/v1/panic/{request_id}")
    def panic(request_id: str) -> dict[str, str]:
        return {"id": request_id}

    @app.post("/api/v1/credits")
    def credits() -> None:
        raise PlatformError("out of credits")

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.receive_text()
        client.flush(timeout=30)  # while open: the report carries the open connection
        await websocket.send_text("ok")

    return app


def recorded(folder: Path) -> list[dict[str, object]]:
    return [e for m in delivered(folder) if m["headers"]["task"] == BATCH_TASK for e in m["kwargs"]["events"]]


def test_requests_are_recorded_by_route_template_and_exceptions_pass_through(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    """Raw ids never become endpoints; the app's exception reaches the caller as itself, recorded as a 500."""
    folder = tmp_path / "broker"
    client = make_client(broker_url="filesystem://", broker_folder=folder)

    async def requests() -> None:
        transport = httpx.ASGITransport(app=build_app(client))
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            for request_id in ("8c9d2f0e-1b7a-4c55-9e0d-1d2c3b4a5f60", "12345", "abc"):
                assert (await http.get(f"/api/v1/panic/{request_id}")).status_code == 200
            assert (await http.get("/nowhere/42")).status_code == 404
            with pytest.raises(PlatformError, match="out of credits"):
                await http.post("/api/v1/credits")

    asyncio.run(requests())
    assert client.flush(timeout=30)
    summaries = [e for e in recorded(folder) if e["kind"] == "http_summary"]
    assert sorted((e["method"], e["endpoint"], e["status"], e["count"]) for e in summaries) == sorted(
        [
            ("GET", "/api/v1/panic/{request_id}", 200, 3),
            ("GET", "/{unmatched}", 404, 1),
            ("POST", "/api/v1/credits", 500, 1),
        ]
    )
    assert not [e for e in recorded(folder) if e["kind"] == "http_request"]  # one summary per key, no event per request
    assert client.stats()["invalid"] == 0


def test_open_websockets_are_reported(make_client: ClientFactory, tmp_path: Path) -> None:
    """An accepted WebSocket counts as open while it lives, and the count goes out in a gauge report."""
    folder = tmp_path / "broker"
    client = make_client(broker_url="filesystem://", broker_folder=folder)
    incoming: list[dict[str, Any]] = [
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": "hello"},
        {"type": "websocket.disconnect", "code": 1000},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "websocket",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [],
        "subprotocols": [],
    }
    asyncio.run(build_app(client)(scope, receive, send))
    assert [m["type"] for m in sent][:2] == ["websocket.accept", "websocket.send"]
    assert client.flush(timeout=30)
    reports = [e["websocket_connections"] for e in recorded(folder) if e["kind"] == "gauge_report"]
    assert 1 in reports
    assert client.flush(timeout=30)
    reports = [e["websocket_connections"] for e in recorded(folder) if e["kind"] == "gauge_report"]
    assert reports[-1] == 0
