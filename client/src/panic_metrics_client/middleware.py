"""ASGI middleware (FastAPI, Starlette, any ASGI app): every HTTP request by route template, open WebSockets.

    app.add_middleware(PanicMetricsMiddleware)

Each request is added to the process's summary of its (method, route template,
status): one `http_summary` per key and interval goes out, not an event per
request (`Client.record_http_request`). The endpoint recorded is the route's
template (`/api/v1/panic/{request_id}`), never the raw path, whose ids would
make a series per request; a request no route matched is recorded as
`/{unmatched}`. The app's own exceptions pass through unchanged (recorded as
status 500); recording never raises into the request. At the end of the
server's lifespan (after its last request) the requests summed since the last
summary go out, or to the spool if SIGTERM already closed the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from panic_metrics_client.client import Client
from panic_metrics_client.state import get_client

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED_ENDPOINT = "/{unmatched}"
logger = logging.getLogger("panic_metrics_client")


def route_template(scope: Scope) -> str:
    """The template of the route that served `scope` (Starlette and FastAPI set `scope["route"]`)."""
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return template if isinstance(template, str) and template.startswith("/") else UNMATCHED_ENDPOINT


class PanicMetricsMiddleware:
    """Sums HTTP requests into the client's summaries and counts open WebSockets through the client."""

    def __init__(self, app: ASGIApp, *, client: Client | None = None) -> None:
        self.app = app
        self._client = client

    @property
    def client(self) -> Client:
        return self._client or get_client()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_after_last_request(message: Message) -> None:
            # The server sends shutdown once its last request was answered (uvicorn waits for them).
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    self.client.server_stopped()
                except Exception:  # never break the server's shutdown
                    logger.exception("http summaries not kept at shutdown")
            await send(message)

        await self.app(scope, receive, send_after_last_request)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # what the client sees when the app raises before answering

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            self._record_request(scope, status, time.perf_counter() - started)

    def _record_request(self, scope: Scope, status: int, seconds: float) -> None:
        try:
            self.client.record_http_request(
                method=str(scope.get("method", "GET")), endpoint=route_template(scope), status=status, duration=seconds
            )
        except Exception:  # recording never breaks the request
            logger.exception("http request not recorded")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = False
        client = self.client

        async def send_counting_accept(message: Message) -> None:
            nonlocal accepted
            await send(message)
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                client.websocket_opened()

        try:
            await self.app(scope, receive, send_counting_accept)
        finally:
            if accepted:
                client.websocket_closed()
