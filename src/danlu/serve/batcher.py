"""Dynamic batching: requests wait briefly for each other, then run as one model call.

A batch is dispatched, as soon as the model is free, for one of three reasons (each counted):

* ``full``: ``max_batch`` requests are waiting;
* ``timeout``: the batch has waited ``max_wait_s`` to fill, counted from when the model became
  free (or from its first request's arrival, if that came later);
* ``idle``: the service is not busy (the last batch held one request and none arrived while it
  ran) and no other admitted request is on its way (being read or decoded): waiting could not
  make the batch bigger, so one client alone never pays the wait.

Counting the wait from the moment the model is free is what lets a busy service fill its
batches: the clients answered by the last batch send their next requests within a few
milliseconds, and they join the requests that queued while it ran, instead of the two groups
taking turns in half-size batches.

The model runs on one thread of its own, off the event loop, so the loop keeps reading and
decoding uploads while a batch runs; the next batch forms meanwhile. A request cancelled while
queued (its client went away, its deadline passed) is dropped before its batch is formed.

Example:
    >>> import asyncio
    >>> async def main():
    ...     batcher = DynamicBatcher(lambda xs: [x * 2 for x in xs], max_batch=4, max_wait_s=0.005)
    ...     batcher.start()
    ...     outs = await asyncio.gather(*(batcher.submit(i) for i in range(6)))
    ...     await batcher.stop()
    ...     return [r for r, _ in outs]
    >>> asyncio.run(main())
    [0, 2, 4, 6, 8, 10]
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

#: why a batch left the queue
REASONS = ("full", "timeout", "idle")


@dataclass(frozen=True)
class BatchInfo:
    """What a request's batch was: its ``size``, why it was dispatched, and how long the
    request waited in the queue (seconds)."""

    size: int
    reason: str
    queue_s: float


@dataclass
class _Job:
    item: Any
    future: asyncio.Future
    enqueued: float


class DynamicBatcher:
    """Gather submitted items into batches for ``run_batch``.

    Args:
        run_batch: ``list of items -> list of results`` (same length, same order); runs on the
            batcher's model thread. If it raises, every request of the batch gets the error.
        max_batch: the most items in one call.
        max_wait_s: the longest the oldest item waits for the batch to fill.
        on_batch: called on the event loop with each dispatched :class:`BatchInfo`
            (``queue_s`` is the oldest item's wait) and the batch's run time in seconds.
        model_thread: the one-thread executor the model runs on (None: a new one).
    """

    def __init__(self, run_batch: Callable[[list[Any]], Sequence[Any]], *, max_batch: int = 16,
                 max_wait_s: float = 0.005,
                 on_batch: Callable[[BatchInfo, float], None] | None = None,
                 model_thread: ThreadPoolExecutor | None = None) -> None:
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.on_batch = on_batch
        self.reasons: Counter[str] = Counter()
        self._pending: deque[_Job] = deque()
        self._incoming = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._model_thread = model_thread or ThreadPoolExecutor(1, thread_name_prefix="danlu-model")
        self._model_free: asyncio.Lock | None = None  # held while the model thread works
        self._free_at = 0.0  # when the model last became free
        self._running = False
        self._arrived_while_running = 0
        self._busy = False  # the last batch had company: wait for the next one to fill

    # -- state -----------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (cancelled ones not counted)."""
        return sum(not j.future.done() for j in self._pending)

    def expect(self, n: int = 1) -> None:
        """``n`` more items will be submitted soon (they are being read or decoded): an
        ``idle`` dispatch waits for them (within ``max_wait_s``). Pair with :meth:`arrived`."""
        self._incoming += n

    def arrived(self, n: int = 1) -> None:
        """``n`` expected items were submitted, or will not be."""
        self._incoming -= n
        self._poke()

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """:meth:`expect` one item for the duration of the block."""
        self.expect()
        try:
            yield
        finally:
            self.arrived()

    # -- life ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the dispatch loop on the running event loop."""
        self._wake = asyncio.Event()
        self._model_free = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="danlu-batcher")

    async def stop(self) -> None:
        """Stop dispatching; queued requests get a ``CancelledError``."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for job in self._pending:
            job.future.cancel()
        self._pending.clear()
        self._model_thread.shutdown(wait=True)

    async def run_in_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread, between batches (e.g. a sliced request);
        batches wait meanwhile, and keep forming, so nothing queued is committed to a model
        call before the model is free."""
        assert self._model_free is not None, "the batcher is not started"
        await self._model_free.acquire()
        future = asyncio.get_running_loop().run_in_executor(self._model_thread, fn, *args)
        # released when the thread is done, not when the caller stops waiting (a deadline)
        future.add_done_callback(lambda _: self._model_free.release())
        return await asyncio.shield(future)

    async def submit(self, item: Any) -> tuple[Any, BatchInfo]:
        """Queue ``item``; returns ``(its result, its BatchInfo)``. Cancelling the awaiting
        task removes a still-queued item from the queue."""
        if self._task is None:
            raise RuntimeError("the batcher is not started")
        future = asyncio.get_running_loop().create_future()
        if self._running:
            self._arrived_while_running += 1
        self._pending.append(_Job(item, future, time.perf_counter()))
        self._poke()
        return await future

    # -- the loop --------------------------------------------------------------------------------
    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _drop_cancelled(self) -> None:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()

    def _live(self) -> int:
        return sum(not j.future.done() for j in self._pending)

    async def _wait(self, timeout: float | None) -> None:
        assert self._wake is not None
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass

    async def _first(self) -> None:
        """Wait until a live item is queued."""
        while True:
            self._drop_cancelled()
            if self._pending:
                return
            await self._wait(None)

    async def _next_batch(self) -> tuple[list[_Job], str]:
        """The next batch and why it leaves; empty when every queued item was cancelled
        (the caller holds the model: it must not wait for new items here)."""
        self._drop_cancelled()
        if not self._pending:
            return [], ""
        deadline = max(self._free_at, self._pending[0].enqueued) + self.max_wait_s
        while True:
            live = self._live()
            if live == 0:
                return [], ""
            if live >= self.max_batch:
                reason = "full"
                break
            if not self._busy and self._incoming == 0:
                reason = "idle"
                break
            left = deadline - time.perf_counter()
            if left <= 0:
                reason = "timeout"
                break
            await self._wait(left)
            self._drop_cancelled()
        jobs: list[_Job] = []
        while self._pending and len(jobs) < self.max_batch:
            job = self._pending.popleft()
            if not job.future.done():
                jobs.append(job)
        return jobs, reason

    async def _loop(self) -> None:
        assert self._model_free is not None
        while True:
            await self._first()
            async with self._model_free:
                await self._run_one_batch()

    async def _run_one_batch(self) -> None:
        loop = asyncio.get_running_loop()
        jobs, reason = await self._next_batch()
        if not jobs:
            return
        started = time.perf_counter()
        self.reasons[reason] += 1
        self._running, self._arrived_while_running = True, 0
        try:
            results = await loop.run_in_executor(self._model_thread, self.run_batch,
                                                 [j.item for j in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for "
                                   f"{len(jobs)} items")
        except asyncio.CancelledError:
            for job in jobs:
                job.future.cancel()
            raise
        except Exception as e:  # noqa: BLE001 - handed to each request of the batch
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)
            return
        finally:
            self._running = False
            self._free_at = time.perf_counter()
            self._busy = len(jobs) > 1 or self._arrived_while_running > 0
        took = self._free_at - started
        if self.on_batch is not None:
            self.on_batch(BatchInfo(len(jobs), reason, started - jobs[0].enqueued), took)
        for job, result in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(
                    (result, BatchInfo(len(jobs), reason, started - job.enqueued)))


__all__ = ["DynamicBatcher", "BatchInfo", "REASONS"]
