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

The model thread forms the batches itself and runs them back to back: it never waits for the
event loop between two batches (the loop, busy answering the last batch's requests, would
otherwise leave the model idle for milliseconds each time). The loop only queues requests and
delivers results, and keeps reading and decoding uploads while a batch runs. A request
cancelled while queued (its client went away, its deadline passed) is dropped before its
batch is formed. Other work for the model (a sliced request, the warm-up) goes through the same
queue with :meth:`DynamicBatcher.run_in_model_thread` and runs alone, in its turn.

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
import threading
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


class _Job:
    """One queued request (``solo`` None) or one piece of solo work (``solo`` a callable)."""

    __slots__ = ("item", "future", "loop", "enqueued", "cancelled", "solo")

    def __init__(self, item: Any, future: asyncio.Future, loop: asyncio.AbstractEventLoop,
                 solo: Callable[[], Any] | None = None) -> None:
        self.item = item
        self.future = future
        self.loop = loop
        self.enqueued = time.perf_counter()
        self.cancelled = False
        self.solo = solo


class DynamicBatcher:
    """Gather submitted items into batches for ``run_batch`` (see the module doc).

    Args:
        run_batch: ``list of items -> list of results`` (same length, same order); runs on the
            model thread. If it raises, every request of the batch gets the error.
        max_batch: the most items in one call.
        max_wait_s: the longest a batch waits to fill once the model is free.
        on_batch: called on the event loop with each batch's :class:`BatchInfo`
            (``queue_s`` is the oldest item's wait) and its run time in seconds.
        model_thread: the one-thread executor the model runs on (None: a new one); the
            batcher's loop occupies it from :meth:`start` to :meth:`stop`.
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
        self._thread = model_thread or ThreadPoolExecutor(1, thread_name_prefix="danlu-model")
        self._cv = threading.Condition()
        # all below: guarded by _cv
        self._pending: deque[_Job] = deque()
        self._incoming = 0
        self._stopping = False
        self._running = False
        self._arrived_while_running = 0
        self._busy = False  # the last batch had company: wait for the next one to fill
        self._free_at = 0.0  # when the model last became free
        self._worker: asyncio.Future | None = None

    # -- state -----------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (cancelled ones not counted)."""
        with self._cv:
            return sum(not j.cancelled for j in self._pending)

    def expect(self, n: int = 1) -> None:
        """``n`` more items will be submitted soon (they are being read or decoded): an
        ``idle`` dispatch waits for them (within ``max_wait_s``). Pair with :meth:`arrived`."""
        with self._cv:
            self._incoming += n

    def arrived(self, n: int = 1) -> None:
        """``n`` expected items were submitted, or will not be."""
        with self._cv:
            self._incoming -= n
            self._cv.notify()

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
        """Start the model thread's loop (call from the event loop)."""
        self._stopping = False
        self._worker = asyncio.wrap_future(self._thread.submit(self._work))

    async def stop(self) -> None:
        """Stop after the work in hand; queued requests get a ``CancelledError``."""
        with self._cv:
            self._stopping = True
            left = list(self._pending)
            self._pending.clear()
            self._cv.notify()
        for job in left:
            job.loop.call_soon_threadsafe(_cancel, job.future)
        if self._worker is not None:
            await self._worker
            self._worker = None
        self._thread.shutdown(wait=True)

    async def submit(self, item: Any) -> tuple[Any, BatchInfo]:
        """Queue ``item``; returns ``(its result, its BatchInfo)``. Cancelling the awaiting
        task drops a still-queued item."""
        return await self._queue(item, None)

    async def run_in_model_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model thread, alone, in its turn in the queue (a sliced
        request, the warm-up). Cancelling the caller before it starts drops it; once started
        it runs to the end (the model stays busy), whatever the caller does."""
        result, _ = await self._queue(None, lambda: fn(*args))
        return result

    async def _queue(self, item: Any, solo: Callable[[], Any] | None) -> tuple[Any, BatchInfo]:
        if self._worker is None:
            raise RuntimeError("the batcher is not started")
        loop = asyncio.get_running_loop()
        job = _Job(item, loop.create_future(), loop, solo)
        job.future.add_done_callback(lambda f: self._forget(job) if f.cancelled() else None)
        with self._cv:
            if self._running:
                self._arrived_while_running += 1
            self._pending.append(job)
            self._cv.notify()
        return await job.future

    def _forget(self, job: _Job) -> None:
        with self._cv:
            job.cancelled = True
            self._cv.notify()

    # -- the model thread ------------------------------------------------------------------------
    def _live(self) -> int:
        """Live requests at the head of the queue, up to the first solo job."""
        n = 0
        for job in self._pending:
            if job.cancelled:
                continue
            if job.solo is not None:
                break
            n += 1
            if n >= self.max_batch:
                break
        return n

    def _drop_cancelled_head(self) -> None:
        while self._pending and self._pending[0].cancelled:
            self._pending.popleft()

    def _next(self) -> tuple[list[_Job], str] | None:
        """Under the lock: wait for the next batch (or solo job); None when stopping."""
        while True:
            self._drop_cancelled_head()
            if self._stopping:
                return None
            if self._pending:
                break
            self._cv.wait()
        head = self._pending[0]
        if head.solo is not None:
            self._pending.popleft()
            return [head], "solo"
        deadline = max(self._free_at, head.enqueued) + self.max_wait_s
        while True:
            live = self._live()
            if self._stopping:
                return None
            if live == 0:  # all cancelled meanwhile, or a solo job is next
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
            self._cv.wait(left)
        jobs: list[_Job] = []
        while self._pending and len(jobs) < self.max_batch:
            job = self._pending[0]
            if job.solo is not None:
                break
            self._pending.popleft()
            if not job.cancelled:
                jobs.append(job)
        return jobs, reason

    def _work(self) -> None:
        while True:
            with self._cv:
                nxt = self._next()
                if nxt is None:
                    return
                jobs, reason = nxt
                if not jobs:
                    continue
                self._running, self._arrived_while_running = True, 0
            started = time.perf_counter()
            try:
                if reason == "solo":
                    outcome: Any = [jobs[0].solo()]
                else:
                    outcome = self.run_batch([j.item for j in jobs])
                    if len(outcome) != len(jobs):
                        raise RuntimeError(f"run_batch returned {len(outcome)} results for "
                                           f"{len(jobs)} items")
            except Exception as e:  # noqa: BLE001 - handed to each request of the batch
                outcome = e
            finished = time.perf_counter()
            with self._cv:
                self._running = False
                self._free_at = finished
                if reason != "solo":
                    self._busy = len(jobs) > 1 or self._arrived_while_running > 0
            jobs[0].loop.call_soon_threadsafe(self._deliver, jobs, reason, outcome, started,
                                              finished - started)

    # -- back on the event loop ------------------------------------------------------------------
    def _deliver(self, jobs: list[_Job], reason: str, outcome: Any, started: float,
                 took: float) -> None:
        if reason != "solo":
            self.reasons[reason] += 1
            if self.on_batch is not None:
                self.on_batch(BatchInfo(len(jobs), reason, started - jobs[0].enqueued), took)
        for i, job in enumerate(jobs):
            if job.future.done():
                continue
            if isinstance(outcome, Exception):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(
                    (outcome[i], BatchInfo(len(jobs), reason, started - job.enqueued)))


def _cancel(future: asyncio.Future) -> None:
    if not future.done():
        future.cancel()


__all__ = ["DynamicBatcher", "BatchInfo", "REASONS"]
