"""The state one server process holds: the dispatcher (the model here, or workers over Redis),
the decode pool, the metrics, admission (the bounded queue) and readiness (loading, ready,
draining)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from danlu.serve.batcher import BatchInfo, DynamicBatcher
from danlu.serve.config import ServeConfig
from danlu.serve.dispatch import Dispatcher, LocalDispatcher
from danlu.serve.engine import Engine, Outcome, Prepared
from danlu.serve.metrics import Metrics
from danlu.serve.problems import overloaded


class Service:
    """Everything a request needs, built at startup (:meth:`start`) and torn down at exit.

    Args:
        config: the settings; with ``config.redis_url`` the work goes to ``danlu worker``
            processes (:class:`~danlu.serve.redis_dispatch.RedisDispatcher`), otherwise to
            the model in this process (:class:`~danlu.serve.dispatch.LocalDispatcher`).
        engine: a ready :class:`Engine` (tests); None: built from ``config`` at :meth:`start`.

    Attributes:
        engine: the model as the routes see it (``dispatcher.front``): options, upload checks,
            class names. An :class:`Engine` here; a model described by the workers over Redis.
        dispatcher: what carries prepared uploads to the model (:mod:`danlu.serve.dispatch`).
    """

    def __init__(self, config: ServeConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine: Any = engine
        self.metrics = Metrics()
        self.dispatcher: Dispatcher | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.state = "loading"
        self.admitted = 0
        self._drained: asyncio.Event | None = None

    @property
    def batcher(self) -> DynamicBatcher | None:
        """The local batcher (None over Redis)."""
        return getattr(self.dispatcher, "batcher", None)

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the model (off the loop) and warm it, or connect to Redis: then ready."""
        self._drained = asyncio.Event()
        self._drained.set()
        self.pool = ThreadPoolExecutor(self.config.threads, thread_name_prefix="danlu-decode")
        if self.config.redis_url:
            from danlu.serve.redis_dispatch import RedisDispatcher

            self.dispatcher = RedisDispatcher(self.config, self.metrics)
        elif self.config.ray:
            from danlu.serve.ray_backend import RayDispatcher

            self.dispatcher = RayDispatcher(self.config, self.metrics)
        else:
            if self.engine is None:
                self.engine = await asyncio.to_thread(Engine.open, self.config)
            self.dispatcher = LocalDispatcher(self.engine, self.config, self.metrics)
        await self.dispatcher.start()
        self.engine = self.dispatcher.front
        if self.config.warmup:  # PIL loads its plugins lazily: the first upload would wait
            await self.in_pool(self.engine.warm_decoders)
        self.state = "ready"

    async def stop(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()
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
    async def admit(self) -> None:
        """Count one more request in, or raise 503: queue full, draining, or the backend's
        own refusal (over Redis: the backlog over ``--max-backlog``, Redis unreachable)."""
        if self.state == "draining":
            self.metrics.rejected.labels("draining").inc()
            raise overloaded(1, draining=True)
        if self.admitted >= self.config.max_queue:
            self.metrics.rejected.labels("queue_full").inc()
            raise overloaded(self.dispatcher.retry_after() if self.dispatcher else 1.0)
        self.admitted += 1
        self.metrics.in_flight.inc()
        if self._drained is not None:
            self._drained.clear()
        if self.dispatcher is not None:
            try:
                await self.dispatcher.admit()
            except BaseException:
                self.release()
                raise

    def release(self) -> None:
        self.admitted -= 1
        self.metrics.in_flight.dec()
        if self.admitted == 0 and self._drained is not None:
            self._drained.set()

    # -- work ------------------------------------------------------------------------------------
    async def in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def infer(self, item: Prepared) -> tuple[Outcome, BatchInfo]:
        """A prepared upload through the dispatcher: its outcome and its batch."""
        assert self.dispatcher is not None
        return await self.dispatcher.submit(item)


__all__ = ["Service"]
