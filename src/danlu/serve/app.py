"""The FastAPI application: routes, the web page, the token, CORS and the metrics.

``create_app(config)`` builds it for one process; ``app_from_env()`` is the factory each
uvicorn worker calls (``danlu serve --workers N``), reading the settings the parent put in the
environment. The model is loaded and warmed in the lifespan, before the first request; with
``config.redis_url`` no model is loaded here: the routes hand the work to ``danlu worker``
processes (:mod:`danlu.serve.redis_dispatch`), with the same API, limits, metrics and page.

Example:
    >>> from danlu.serve.app import create_app          # doctest: +SKIP
    >>> from danlu.serve.config import ServeConfig      # doctest: +SKIP
    >>> app = create_app(ServeConfig("runs/demo/best.pt"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from danlu.serve import detect as detect_routes
from danlu.serve.config import ServeConfig
from danlu.serve.engine import Engine
from danlu.serve.middleware import CountRequests, TokenAuth
from danlu.serve.service import Service

STATIC = Path(__file__).parent / "static"
# The detect routes read their options and body themselves (admission comes before the body
# is read, and FastAPI's parameter machinery costs CPU on every request): the schema says
# what they take.
_PARAMS = [
    {"name": "score_threshold", "in": "query", "schema": {"type": "number", "minimum": 0,
     "maximum": 1}, "description": "the lowest score returned"},
    {"name": "classes", "in": "query", "schema": {"type": "string"},
     "description": "keep only these classes: comma-separated names or ids"},
    {"name": "max_detections", "in": "query", "schema": {"type": "integer", "minimum": 1},
     "description": "the most detections returned, best first"},
    {"name": "slice", "in": "query", "schema": {"type": "string"},
     "description": "predict tile by tile: the tile side in pixels, or 'auto'"},
    {"name": "overlap", "in": "query", "schema": {"type": "number", "minimum": 0,
     "maximum": 0.95}, "description": "the fraction a tile shares with its neighbour"},
]
_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_DETECT_BODY = {"parameters": _PARAMS, "requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}}}},
    **{t: _IMAGE_BODY for t in ("image/jpeg", "image/png", "image/webp", "image/tiff")}}}}
_BATCH_BODY = {"parameters": _PARAMS, "requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["images"], "properties": {
        "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}}}}}}


def create_app(config: ServeConfig, engine: Engine | None = None) -> FastAPI:
    """The service's ASGI application (the model loads when the app starts).

    Args:
        config: the settings.
        engine: an already-built :class:`Engine` (tests); None: built from ``config``.
    """
    service = Service(config, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="danlu serve", version=_version(), lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="Object detection over HTTP. `POST /v1/detect` "
                  "with an image; the page at `/` does it in a browser.")
    app.state.service = service
    _routes(app, service)
    _docs(app)  # before /static: its /static/swagger mount must match first
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    if config.token:
        app.add_middleware(TokenAuth, token=config.token, metrics=service.metrics)
    app.add_middleware(CountRequests, metrics=service.metrics)
    return app


def app_from_env() -> FastAPI:
    """The factory a uvicorn worker calls (``danlu serve`` sets the environment)."""
    return create_app(ServeConfig.from_env())


def _version() -> str:
    from danlu import __version__

    return __version__


def _routes(app: FastAPI, service: Service) -> None:
    json = detect_routes.json_response

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> Response:
        return json({"status": "alive"})

    @app.get("/readyz", summary="Readiness: model loaded and warmed (over Redis: a worker "
             "alive), not draining")
    async def readyz() -> Response:
        if service.state != "ready" or service.dispatcher is None:
            return json({"status": service.state}, 503)
        doc, ready = await service.dispatcher.readiness()
        return json(doc, 200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        extra = b"" if service.dispatcher is None else await service.dispatcher.metrics_text()
        body, ctype = service.metrics.render()
        return Response(body + extra, media_type=ctype)

    @app.get("/v1/model", summary="The model: classes, input size, version, checkpoint hash")
    async def model() -> Response:
        doc = None if service.dispatcher is None else await service.dispatcher.describe()
        if doc is None:
            return json({"error": {"status": 503, "code": "loading",
                                   "message": "the model is loading (over Redis: no worker has "
                                   "described it yet)"}}, 503)
        return json(doc)

    @app.post("/v1/detect", summary="Detect objects in one image", openapi_extra=_DETECT_BODY)
    async def detect(request: Request) -> Response:
        """Send the image as multipart field `image`, or as the raw body with an image
        content type. Options (query, or form fields): `score_threshold` (0-1), `classes`
        (comma-separated names or ids), `max_detections`, `slice` (tile side in pixels, or
        `auto`, for big images), `overlap` (0-0.95). Boxes are `[x1, y1, x2, y2]` in the
        image's pixels, upright as its EXIF orientation says."""
        return await detect_routes.detect(service, request)

    @app.post("/v1/detect/batch", summary="Detect objects in several images",
              openapi_extra=_BATCH_BODY)
    async def detect_batch(request: Request) -> Response:
        """One multipart field `images` per image; the same options as `/v1/detect`. Each
        image answers, or fails alone with its own `error`."""
        return await detect_routes.detect_batch(service, request)

    @app.get("/", include_in_schema=False)
    async def page() -> Any:
        return FileResponse(STATIC / "index.html")


def _docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from local files (swagger-ui-bundle) when installed."""
    from fastapi.openapi.docs import get_swagger_ui_html

    try:
        import swagger_ui_bundle

        app.mount("/static/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path),
                  name="swagger")
        urls = {"swagger_js_url": "/static/swagger/swagger-ui-bundle.js",
                "swagger_css_url": "/static/swagger/swagger-ui.css",
                "swagger_favicon_url": "/static/swagger/favicon-32x32.png"}
    except ImportError:  # FastAPI's default: the CDN
        urls = {}

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="danlu serve API", **urls)


__all__ = ["create_app", "app_from_env", "STATIC"]
