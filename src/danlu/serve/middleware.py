"""Two plain ASGI middlewares (no ``BaseHTTPMiddleware``: it would hide client disconnects
from the handlers): the bearer token, and the request counter."""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from danlu.serve.metrics import Metrics

#: paths that never need the token: liveness, and the page's own static files (they hold no
#: data; the page sends the token with its API calls)
PUBLIC_PATHS = ("/healthz", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
#: paths counted under their own name in ``danlu_requests_total``; the rest as ``other``
KNOWN_ROUTES = ("/v1/detect", "/v1/detect/batch", "/v1/model", "/healthz", "/readyz",
                "/metrics", "/", "/docs", "/openapi.json")


class TokenAuth:
    """Require ``Authorization: Bearer <token>`` (constant-time compare) except on
    :data:`PUBLIC_PATHS`; 401 with a JSON error otherwise."""

    def __init__(self, app: Any, token: str, metrics: Metrics) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _public(scope["path"]):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        self.metrics.rejected.labels("unauthorized").inc()
        body = orjson.dumps({"error": {"status": 401, "code": "unauthorized",
                                       "message": "missing or wrong bearer token"}})
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": body})


class CountRequests:
    """``danlu_requests_total{route, status}`` for every response, errors included."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        route = path if path in KNOWN_ROUTES else ("/static" if _public(path) else "other")
        status = [500]

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(route, str(status[0])).inc()


def _public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


__all__ = ["TokenAuth", "CountRequests", "PUBLIC_PATHS"]
