"""The state one server process holds: the engine, the batcher, the decode pool, the metrics,
admission (the bounded queue) and readiness (loading, ready, draining)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from danlu.serve.batcher import BatchInfo, DynamicBatcher
from danlu.serve.config import ServeConfig
from danlu.serve.engine import Engine, Outcome, Prepared
from danlu.serve.metrics import Metrics
from danlu.serve.problems import overloaded


class Service:
    """Everything a request needs, built at startup (:meth:`start`) and torn down at exit.

    Args:
        config: the settings.
        engine: a ready :class:`Engine` (tests); None: built from ``config`` at :meth:`start`.
    """

    def __init__(self, config: ServeConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine
        self.metrics = Metrics()
        self.batcher: DynamicBatcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.state = "loading"
        self.admitted = 0
        self._batch_seconds: float | None = None  # a moving average of the batch run time
        self._drained: asyncio.Event | None = None

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model (off the loop), warm it, start the batcher: then ready."""
        self._drained = asyncio.Event()
        self._drained.set()
        self.pool = ThreadPoolExecutor(self.config.threads, thread_name_prefix="danlu-decode")
        if self.engine is None:
            self.engine = await asyncio.to_thread(Engine.open, self.config)
        self.batcher = DynamicBatcher(self._run_batch, max_batch=self.config.max_batch,
                                      max_wait_s=self.config.max_wait_ms / 1000.0,
                                      on_batch=self._on_batch,
                                      model_thread=self.engine.thread)
        self.batcher.start()
        if self.config.warmup:
            await self.batcher.run_in_model_thread(self.engine.warmup)
            await self.in_pool(self.engine.warm_decoders)
        self.state = "ready"

    def _run_batch(self, items: list[Prepared]) -> list[Outcome]:
        assert self.engine is not None
        with self.metrics.model_busy.track_inprogress():
            return self.engine.run_batch(items)

    def _run_sliced(self, item: Prepared) -> Outcome:
        assert self.engine is not None
        with self.metrics.model_busy.track_inprogress():
            return self.engine.run_sliced(item)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def begin_drain(self) -> None:
        """Readiness turns 503 now; new detection requests are refused from now on."""
        self.state = "draining"

    async def wait_drained(self, timeout_s: float) -> bool:
        """Wait until no admitted request is left (True) or ``timeout_s`` passed (False)."""
        assert self._drained is not None
        try:
            async with asyncio.timeout(timeout_s):
                await self._drained.wait()
            return True
        except TimeoutError:
            return False

    # -- admission -------------------------------------------------------------------------------
    def admit(self) -> None:
        """Count one more request in, or raise 503 (queue full, or draining)."""
        if self.state == "draining":
            self.metrics.rejected.labels("draining").inc()
            raise overloaded(1, draining=True)
        if self.admitted >= self.config.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise overloaded(self._retry_after())
        self.admitted += 1
        self.metrics.in_flight.inc()
        if self._drained is not None:
            self._drained.clear()

    def release(self) -> None:
        self.admitted -= 1
        self.metrics.in_flight.dec()
        if self.admitted == 0 and self._drained is not None:
            self._drained.set()

    def _retry_after(self) -> float:
        """About how long the queue takes to empty: batches ahead times a batch's time."""
        per_batch = self._batch_seconds or 0.05
        return per_batch * self.config.max_queue / self.config.max_batch

    def _on_batch(self, info: BatchInfo, took_s: float) -> None:
        self._batch_seconds = took_s if self._batch_seconds is None \
            else 0.8 * self._batch_seconds + 0.2 * took_s
        self.metrics.batch_size.observe(info.size)
        self.metrics.batches.labels(info.reason).inc()
        self.metrics.queue_depth.set(self.batcher.queue_depth if self.batcher else 0)

    # -- work ------------------------------------------------------------------------------------
    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def infer(self, item: Prepared) -> tuple[Outcome, BatchInfo]:
        """Queue a prepared upload for a batch (or run a sliced one between batches)."""
        assert self.batcher is not None and self.engine is not None
        if item.options.slice_size is not None:
            t0 = time.perf_counter()
            outcome = await self.batcher.run_in_model_thread(self._run_sliced, item)
            waited = time.perf_counter() - t0 - outcome.infer_s
            return outcome, BatchInfo(1, "sliced", max(0.0, waited))
        self.metrics.queue_depth.set(self.batcher.queue_depth + 1)
        return await self.batcher.submit(item)


__all__ = ["Service"]
