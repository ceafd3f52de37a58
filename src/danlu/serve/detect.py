"""``POST /v1/detect`` and ``POST /v1/detect/batch``: read, check, decode, batch, answer.

The order matters for the limits: admission (the bounded queue, 503) comes before the body is
read; the declared ``Content-Length`` (413) before a byte is read; the body's real size while
it streams in; the format and the pixel count from the image header (415, 413) before the
pixels are decoded. Every stage runs under the request's deadline (504 names the stage), and a
client that disconnects while its request waits has the request dropped from the queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from danlu.serve.dispatch import REQUEST_DEADLINE
from danlu.serve.engine import DetectOptions, Outcome, Prepared, detections_json
from danlu.serve.multipart import FilePart, Form, MultipartError, parse_form
from danlu.serve.problems import RequestProblem, deadline
from danlu.serve.service import Service

#: option names, as query parameters or multipart form fields
OPTION_FIELDS = ("score_threshold", "classes", "max_detections", "slice", "overlap")
_RAW_TYPES = ("image/", "application/octet-stream")


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None
                  ) -> Response:
    return Response(orjson.dumps(doc), status, headers=headers, media_type="application/json")


def problem_response(problem: RequestProblem) -> Response:
    return json_response(problem.body(), problem.status, problem.headers)


class _Stage:
    """Where a request is (for the 504): ``queue`` becomes ``infer`` once its batch runs."""

    def __init__(self) -> None:
        self._name = "admit"
        self.item: Prepared | None = None

    @property
    def name(self) -> str:
        if self._name == "queue" and self.item is not None and self.item.dispatched:
            return "infer"
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (413) before and while reading."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestProblem(413, "too_large", f"the upload is {int(declared)} bytes; the "
                             f"limit is {limit} bytes", stage="read")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestProblem(413, "too_large", f"the upload is over the limit of {limit} "
                                 "bytes", stage="read")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # noqa: SLF001 - lets Starlette parse the form from what we read
    return body


async def _form(request: Request, body: bytes, max_files: int) -> Form:
    """The multipart form: sliced from the body, or (a body the fast reader refuses) parsed
    by Starlette's reference parser."""
    try:
        return parse_form(body, request.headers.get("content-type", ""),
                          max_parts=max_files + 64)
    except MultipartError:
        pass
    try:
        parsed = await request.form(max_files=max_files, max_fields=64)
    except Exception as e:  # noqa: BLE001 - python-multipart / Starlette parse errors
        raise RequestProblem(400, "bad_request", f"cannot parse the multipart form ({e})",
                             stage="read") from e
    form = Form()
    for name, value in parsed.multi_items():
        if isinstance(value, UploadFile):
            form.files.append(FilePart(name, value.filename or "", await value.read(),
                                       value.content_type or ""))
        elif name not in form.fields:
            form.fields[name] = str(value)
    return form


def _kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "").lower()
    if ctype.startswith("multipart/form-data"):
        return "multipart"
    if ctype.startswith(_RAW_TYPES):
        return "raw"
    raise RequestProblem(415, "unsupported_format",
                         f"content type {ctype or '(none)'!r}: send multipart/form-data with "
                         "a file field 'image', or the image bytes with an image/* type",
                         stage="read")


def _options(service: Service, request: Request, form: Form | None = None) -> DetectOptions:
    values = {k: request.query_params.get(k) for k in OPTION_FIELDS}
    if form is not None:
        for k in OPTION_FIELDS:
            if values[k] is None:
                values[k] = form.fields.get(k)
    assert service.engine is not None
    return service.engine.options(values["score_threshold"], values["classes"],
                                  values["max_detections"], values["slice"], values["overlap"])


async def _until_disconnect(request: Request) -> None:
    """Return when the client goes away (the body is read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _guarded(service: Service, request: Request, stage: _Stage,
                   work: Callable[[], Awaitable[Response]]) -> Response:
    """Run ``work`` under the deadline, admitted, and dropped if the client disconnects."""
    t0 = time.perf_counter()
    try:
        await service.admit()
    except RequestProblem as p:
        return problem_response(p)
    # the dispatcher reads it (a job sent elsewhere carries what is left of it)
    REQUEST_DEADLINE.set(time.monotonic() + service.config.timeout_s)
    try:
        async with asyncio.timeout(service.config.timeout_s):
            return await work()
    except TimeoutError:
        service.metrics.rejected.labels("deadline").inc()
        return problem_response(deadline(stage.name, service.config.timeout_s))
    except RequestProblem as p:
        service.metrics.rejected.labels(p.code).inc()
        return problem_response(p)
    finally:
        service.release()
        service.metrics.request_seconds.labels(request.url.path).observe(
            time.perf_counter() - t0)


async def _decode(service: Service, data: bytes, options: DetectOptions, stage: _Stage
                  ) -> Prepared:
    assert service.engine is not None
    stage.name = "decode"
    if service.engine.prepare_inline:  # a header read (RemoteFront): no thread hop
        return service.engine.prepare(data, options)
    return await service.in_pool(service.engine.prepare, data, options)


async def _answer(service: Service, item: Prepared, stage: _Stage, started: float
                  ) -> dict[str, Any]:
    """A decoded image through queue and model -> its 200 document."""
    stage.name = "queue"
    stage.item = item
    outcome, info = await service.infer(item)
    stage.name = "respond"
    return _document(service, item, outcome, info, started)


def _document(service: Service, item: Prepared, outcome: Outcome, info: Any,
              started: float) -> dict[str, Any]:
    assert service.engine is not None
    m = service.metrics.stage_seconds
    timings = {"queue": info.queue_s, "decode": item.decode_s, "infer": outcome.infer_s,
               "post": outcome.post_s}
    for k, v in timings.items():
        m.labels(k).observe(v)
    timings["total"] = time.perf_counter() - started
    doc = {"width": item.width, "height": item.height, "count": len(outcome.detections),
           "detections": detections_json(outcome.detections, service.engine.class_names),
           "timings_ms": {k: round(v * 1000.0, 3) for k, v in timings.items()},
           "batch_size": info.size, "model": service.engine.name}
    doc.update(outcome.extra)
    return doc


async def detect(service: Service, request: Request) -> Response:
    """The handler of ``POST /v1/detect``."""
    stage = _Stage()
    started = time.perf_counter()

    async def work() -> Response:
        stage.name = "read"
        with service.dispatcher.incoming():  # an idle batch waits for it until it is queued
            kind = _kind(request)
            body = await read_body(request, service.config.max_upload_bytes)
            if kind == "multipart":
                form = await _form(request, body, 1)
                upload = form.file("image")
                if upload is None:
                    raise RequestProblem(400, "bad_request", "the multipart form has no file "
                                         "field 'image'", stage="read")
                data = upload.data
                options = _options(service, request, form)
            else:
                data, options = body, _options(service, request)
            item = await _decode(service, data, options, stage)
        doc = await _cancel_on_disconnect(request, _answer(service, item, stage, started))
        return json_response(doc)

    return await _guarded(service, request, stage, work)


async def detect_batch(service: Service, request: Request) -> Response:
    """The handler of ``POST /v1/detect/batch``: each image answers or fails alone."""
    stage = _Stage()
    started = time.perf_counter()

    async def one(upload: FilePart, options: DetectOptions, waiting: set[int]
                  ) -> dict[str, Any]:
        name = upload.filename
        try:
            try:
                item = await _decode(service, upload.data, options, _Stage())
            finally:
                waiting.discard(id(upload))
                service.dispatcher.arrived()
            return {"filename": name, **await _answer(service, item, _Stage(), started)}
        except RequestProblem as p:
            service.metrics.rejected.labels(p.code).inc()
            return {"filename": name, **p.body()}

    async def work() -> Response:
        stage.name = "read"
        with service.dispatcher.incoming():  # the request, until its images are expected
            if _kind(request) != "multipart":
                raise RequestProblem(415, "unsupported_format", "send multipart/form-data with "
                                     "one file field 'images' per image", stage="read")
            body = await read_body(request, service.config.max_upload_bytes)
            form = await _form(request, body, 1000)
            uploads = form.files_named("images")
            if not uploads:
                raise RequestProblem(400, "bad_request", "the multipart form has no file "
                                     "field 'images'", stage="read")
            options = _options(service, request, form)
            service.dispatcher.expect(len(uploads))
        waiting = {id(u) for u in uploads}
        stage.name = "queue"
        try:
            results = await _cancel_on_disconnect(
                request, asyncio.gather(*(one(u, options, waiting) for u in uploads)))
        finally:
            service.dispatcher.arrived(len(waiting))  # those cancelled before they were decoded
        failed = sum("error" in r for r in results)
        return json_response({"results": results, "count": len(results), "failed": failed})

    return await _guarded(service, request, stage, work)


async def _cancel_on_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (dropping queued items)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        raise RequestProblem(499, "client_closed", "the client disconnected", stage="queue")
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


__all__ = ["detect", "detect_batch", "read_body", "json_response", "problem_response",
           "OPTION_FIELDS"]
