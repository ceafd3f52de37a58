"""The seam between a request and the model that answers it: a *dispatcher*.

:mod:`danlu.serve.detect` admits a request, reads and checks its upload, and hands the prepared
item to ``service.dispatcher``; how the item reaches a model is the dispatcher's business. Two
live here, behind the same calls, so the API, its limits, metrics and page stay one whatever
carries the work:

* :class:`LocalDispatcher`: the model in this process, behind the :class:`DynamicBatcher`
  (``danlu serve MODEL``; also what a ``danlu worker`` runs its jobs through);
* :class:`danlu.serve.redis_dispatch.RedisDispatcher`: the model in ``danlu worker``
  processes, over Redis Streams (``danlu serve MODEL --redis URL``).

A new backend (a Ray Serve deployment, say) implements :class:`Dispatcher` and is chosen in
:meth:`danlu.serve.service.Service.start`. What it must do:

* ``front``: the model as the web side sees it: ``options(...)`` validates a request's options
  (422), ``prepare(data, options)`` checks an upload (in the decode pool; 400 / 413 / 415) and
  returns a :class:`~danlu.serve.engine.Prepared`, ``class_names`` and ``name`` name the
  detections. An :class:`~danlu.serve.engine.Engine` locally; for a model elsewhere a
  :class:`RemoteFront`, which checks the header only and keeps the encoded bytes
  (:class:`Encoded`: ``item.data``, ``item.options``) for the side that decodes.
* ``await admit()``: the backend's own admission, before the body is read (503 + Retry-After);
* ``await submit(item) -> (Outcome, BatchInfo)``: the answer, or a
  :class:`~danlu.serve.problems.RequestProblem` (a bad image found late: 4xx; the model failed
  on it: 500 ``model_error``; the backend is gone: 503 ``backend_unavailable``). Cancelling the
  awaiting task abandons the item; :data:`REQUEST_DEADLINE` tells how long it may take.
* ``expect(n)`` / ``arrived(n)`` / ``incoming()``: hints that items are on their way (being
  read or decoded), so a local batch waits for them; no-ops where batching happens elsewhere
  (:func:`nothing_expected`).
* ``retry_after()``, ``await readiness()`` (``/readyz``), ``await describe()``
  (``/v1/model``), ``await metrics_text()`` (more Prometheus text for ``/metrics``), and
  ``await start()`` / ``await stop()``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from danlu.serve.batcher import BatchInfo, DynamicBatcher
from danlu.serve.config import ServeConfig
from danlu.serve.engine import (
    DetectOptions,
    Engine,
    Outcome,
    Prepared,
    decode_upload,
    file_sha256,
)
from danlu.serve.metrics import Metrics
from danlu.serve.problems import RequestProblem

#: when the current request's deadline passes (``time.monotonic()`` seconds), set by the
#: detect routes; None outside a request
REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("danlu_request_deadline", default=None)


def seconds_left(default: float) -> float:
    """Seconds until the current request's deadline (``default`` outside a request)."""
    deadline = REQUEST_DEADLINE.get()
    return default if deadline is None else deadline - time.monotonic()


class Dispatcher(Protocol):
    """What carries prepared uploads to a model (the module doc has the contract)."""

    kind: str
    front: Any

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def admit(self) -> None: ...

    async def submit(self, item: Prepared) -> tuple[Outcome, BatchInfo]: ...

    def expect(self, n: int = 1) -> None: ...

    def arrived(self, n: int = 1) -> None: ...

    def incoming(self) -> contextlib.AbstractContextManager[None]: ...

    def retry_after(self) -> float: ...

    async def readiness(self) -> tuple[dict[str, Any], bool]: ...

    async def describe(self) -> dict[str, Any] | None: ...

    async def metrics_text(self) -> bytes: ...


class ModelFailure:
    """What the model raised on one item (kept as text: it crosses threads and processes)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = f"{type(error).__name__}: {error}"


def model_error(failure: ModelFailure) -> RequestProblem:
    """The 500 a request gets when the model raised on its image."""
    return RequestProblem(500, "model_error", f"the model failed on this image "
                          f"({failure.error})", stage="infer")


class LocalDispatcher:
    """The model in this process: :class:`Engine` behind a :class:`DynamicBatcher`.

    A batch the model raises on is run again item by item, so only the image that makes it
    raise fails (500 ``model_error``) and the others of its batch are answered as usual.

    Args:
        engine: a ready engine (built with :meth:`Engine.open`: its model thread).
        config: the settings (``max_batch``, ``max_wait_ms``, ``max_queue``, ``warmup``).
        metrics: where batches, batch sizes, queue depth and model time are counted.
        on_batch: also called with each batch's :class:`BatchInfo` and run time (seconds),
            on the event loop.
    """

    kind = "local"

    def __init__(self, engine: Engine, config: ServeConfig, metrics: Metrics,
                 on_batch: Any = None) -> None:
        self.engine = engine
        self.front = engine
        self.config = config
        self.metrics = metrics
        self.extra_on_batch = on_batch
        self.batcher: DynamicBatcher | None = None
        self._batch_seconds: float | None = None  # a moving average of the batch run time

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batcher on the engine's model thread and warm the model up."""
        c = self.config
        self.batcher = DynamicBatcher(self._run_batch, max_batch=c.max_batch,
                                      max_wait_s=c.max_wait_ms / 1000.0,
                                      on_batch=self._on_batch, model_thread=self.engine.thread)
        self.batcher.start()
        if c.warmup:
            await self.batcher.run_in_model_thread(self.engine.warmup)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    # -- hints and admission -----------------------------------------------------------------------
    async def admit(self) -> None:
        """Nothing beyond the service's own bounded queue."""

    def expect(self, n: int = 1) -> None:
        assert self.batcher is not None
        self.batcher.expect(n)

    def arrived(self, n: int = 1) -> None:
        assert self.batcher is not None
        self.batcher.arrived(n)

    def incoming(self) -> contextlib.AbstractContextManager[None]:
        assert self.batcher is not None
        return self.batcher.incoming()

    @property
    def queue_depth(self) -> int:
        return 0 if self.batcher is None else self.batcher.queue_depth

    def retry_after(self) -> float:
        """About how long the queue takes to empty: batches ahead times a batch's time."""
        per_batch = self._batch_seconds or 0.05
        return per_batch * self.config.max_queue / self.config.max_batch

    # -- work ------------------------------------------------------------------------------------
    async def submit(self, item: Prepared) -> tuple[Outcome, BatchInfo]:
        """Queue ``item`` for a batch (or run a sliced one alone, between batches)."""
        assert self.batcher is not None
        if item.options.slice_size is not None:
            t0 = time.perf_counter()
            out = await self.batcher.run_in_model_thread(self._run_sliced, item)
            if isinstance(out, ModelFailure):
                raise model_error(out)
            waited = time.perf_counter() - t0 - out.infer_s
            return out, BatchInfo(1, "sliced", max(0.0, waited))
        self.metrics.queue_depth.set(self.batcher.queue_depth + 1)
        out, info = await self.batcher.submit(item)
        if isinstance(out, ModelFailure):
            raise model_error(out)
        return out, info

    def model_batch(self, items: list[Prepared]) -> list[Outcome]:
        """One model call (on the model thread); a subclass may wrap it (fault injection)."""
        return self.engine.run_batch(items)

    def model_sliced(self, item: Prepared) -> Outcome:
        """One sliced prediction (on the model thread)."""
        return self.engine.run_sliced(item)

    def _run_batch(self, items: list[Prepared]) -> list[Outcome | ModelFailure]:
        with self.metrics.model_busy.track_inprogress():
            try:
                return list(self.model_batch(items))
            except Exception as e:  # noqa: BLE001 - isolated below, item by item
                if len(items) == 1:
                    return [ModelFailure(e)]
            out: list[Outcome | ModelFailure] = []
            for it in items:  # find the image the model raises on; the rest are answered
                try:
                    out.extend(self.model_batch([it]))
                except Exception as e:  # noqa: BLE001 - this item's own failure
                    out.append(ModelFailure(e))
            return out

    def _run_sliced(self, item: Prepared) -> Outcome | ModelFailure:
        with self.metrics.model_busy.track_inprogress():
            try:
                return self.model_sliced(item)
            except Exception as e:  # noqa: BLE001 - the request's own failure
                return ModelFailure(e)

    def _on_batch(self, info: BatchInfo, took_s: float) -> None:
        self._batch_seconds = took_s if self._batch_seconds is None \
            else 0.8 * self._batch_seconds + 0.2 * took_s
        self.metrics.batch_size.observe(info.size)
        self.metrics.batches.labels(info.reason).inc()
        self.metrics.queue_depth.set(self.queue_depth)
        if self.extra_on_batch is not None:
            self.extra_on_batch(info, took_s)

    # -- what the routes report ------------------------------------------------------------------
    async def readiness(self) -> tuple[dict[str, Any], bool]:
        return {"status": "ready"}, True

    async def describe(self) -> dict[str, Any] | None:
        return self.engine.describe()

    async def metrics_text(self) -> bytes:
        self.metrics.queue_depth.set(self.queue_depth)
        return b""


@dataclass
class Encoded(Prepared):
    """A checked upload still encoded (decoded where the model is): the bytes as they came."""

    data: bytes = b""


class RemoteFront(Engine):
    """The model as the web side sees it when it runs elsewhere (Redis workers; Ray replicas
    next), with no torch and no checkpoint here: a description the backend published
    (:meth:`update`; :meth:`Engine.describe`'s document) gives the class names and the name;
    options are validated by :meth:`Engine.options` itself (inherited), uploads are checked
    from their header (:meth:`prepare`) and kept encoded (:class:`Encoded`).

    Args:
        config: the web side's settings (the default score threshold, the upload limits).
    """

    #: :meth:`prepare` reads a header only (tens of microseconds): the routes run it on the
    #: event loop, sparing the request a hop to the decode pool and back
    prepare_inline: bool = True

    def __init__(self, config: ServeConfig) -> None:  # no Engine.__init__: no model here
        self.config = config
        self.description: dict[str, Any] | None = None
        self.class_names: list[str] = []
        path = Path(config.model)
        #: the SHA-256 of MODEL when it is a file on this machine: workers must serve it
        self.expected_sha256 = file_sha256(path) if path.is_file() else None

    def update(self, description: dict[str, Any] | None) -> None:
        if description is not None:
            self.description = description
            self.class_names = list(description.get("class_names", []))

    @property
    def name(self) -> str:
        return str((self.description or {}).get("name", "unknown"))

    def options(self, score_threshold: Any = None, classes: Any = None,
                max_detections: Any = None, slice_size: Any = None,
                overlap: Any = None) -> DetectOptions:
        """:meth:`Engine.options` (the same checks and messages), once the backend has said
        what the classes are."""
        if self.description is None:
            raise RequestProblem(503, "no_workers", "no model worker has described the model "
                                 "yet (start the model workers)", stage="admit",
                                 headers={"Retry-After": "1"})
        return super().options(score_threshold, classes, max_detections, slice_size, overlap)

    def prepare(self, data: bytes, options: DetectOptions) -> Encoded:
        """The header checks of :func:`~danlu.serve.engine.decode_upload` (empty, format,
        pixel count: 400 / 415 / 413), without decoding; the bytes travel as they are."""
        t0 = time.perf_counter()
        width, height = check_header(data, self.config)
        return Encoded(options, width, height, time.perf_counter() - t0, data=data)


def check_header(data: bytes, config: ServeConfig) -> tuple[int, int]:
    """``(width, height)`` from an upload's header (PIL's lazy open, as
    :func:`danlu.infer.images.read_image` opens it); RequestProblem as the local decode
    stage answers them."""
    from danlu.errors import DatasetError
    from danlu.infer import images

    if not data:
        decode_upload(data, config)  # its 400 for zero bytes
    try:
        # the header half of read_image: its checks and messages, no pixel decoded
        im = images._open(data, f"<{len(data)} bytes>", config.max_pixels, config.formats)
    except images.ImageTooLarge as e:
        raise RequestProblem(413, "too_large", e.message, stage="decode") from e
    except (images.NotAnImage, images.UnsupportedImageFormat) as e:
        text = e.message + (f" ({e.hint})" if e.hint else "")
        raise RequestProblem(415, "unsupported_format", text, stage="decode") from e
    except DatasetError as e:
        raise RequestProblem(400, "bad_image", e.message, stage="decode") from e
    size = im.size
    im.close()
    return int(size[0]), int(size[1])


@contextlib.contextmanager
def nothing_expected() -> Iterator[None]:
    """The ``incoming()`` of a dispatcher that batches elsewhere."""
    yield


__all__ = ["Dispatcher", "LocalDispatcher", "RemoteFront", "Encoded", "check_header",
           "ModelFailure", "model_error", "REQUEST_DEADLINE", "seconds_left", "nothing_expected"]
