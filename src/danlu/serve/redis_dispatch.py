"""The web side of ``danlu serve MODEL --redis URL``: no model here, the work goes to
``danlu worker`` processes over Redis Streams (the keys: :mod:`danlu.serve.redis_queue`).

A request is admitted, read and checked here exactly as on the local path (the bounded queue,
the upload limits, the header's format and pixel count before anything is decoded), then:

1. **admission** (before the body is read): ``XLEN P:jobs`` at or over ``--max-backlog`` is a
   503 + Retry-After (``backlog_full``); Redis unreachable is a 503 ``backend_unavailable``;
2. **the job**: ``XADD P:jobs * id image opts budget``: the upload as it came (JPEG / PNG
   bytes, never decoded pixels), the validated options, what is left of the deadline;
3. **the answer**: ``BLPOP P:reply:ID`` for what is left of the deadline. A worker answers each
   job once (``SET NX P:done:ID`` in the same script as its ``LPUSH``).

Why a reply list and not pub/sub: a list holds an answer that arrives before its reader (the
worker can be faster than the web's next command) and through a reconnect, where a published
message reaches only the subscribers connected at that instant and is then gone. The cost is
one pooled connection per waiting request, bounded by ``--max-queue``: the wait pool is a
blocking pool of ``max_queue + 16`` connections (a batch request's images wait for one in turn,
their jobs already queued), apart from the pool of short commands so waits never starve
admission. A wait whose connection breaks is sent again, once, only when its job is still
there (a pooled connection left stale by a restart); a job a restarted Redis forgot is a 503
at once rather than a 504 later. A monitor task (every
:data:`~danlu.serve.redis_queue.HEARTBEAT_S`) reads the model description and the live
workers and notices a Redis that restarted (its ``run_id`` changed): it then drops the waits'
connections, so the requests whose jobs were lost get their 503 at once (the others wait
again).

A request that goes away (its client disconnected, its deadline passed) deletes its job from
the stream (``XDEL``), so a job not yet read is never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import orjson

from danlu.serve import redis_queue as rq
from danlu.serve.batcher import BatchInfo
from danlu.serve.config import ServeConfig
from danlu.serve.dispatch import Encoded, RemoteFront, nothing_expected, seconds_left
from danlu.serve.engine import Outcome, Prepared
from danlu.serve.metrics import Metrics
from danlu.serve.problems import RequestProblem


class RedisDispatcher:
    """Jobs to ``danlu worker`` processes over Redis (the module doc).

    Args:
        config: the settings (``redis_url``, ``redis_prefix``, ``max_backlog``,
            ``max_queue``, ``timeout_s``).
        metrics: the service's metrics (refusals are counted there).
    """

    kind = "redis"

    def __init__(self, config: ServeConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.keys = rq.Keys(config.redis_prefix)
        self.front = RemoteFront(config)
        self.redis: Any = None  # short commands (admission, XADD, the monitor)
        self.waits: Any = None  # BLPOPs: one connection per waiting request
        self.workers: list[dict[str, Any]] = []
        self._run_id: str | None = None
        self._monitor: asyncio.Task | None = None
        self._background: set[asyncio.Task] = set()
        self._job_s = 0.05  # a worker's time per job (from the heartbeats), for Retry-After

    async def start(self) -> None:
        """Connect (lazily: Redis may be down now and come up later) and start the monitor."""
        url = rq.check_url(self.config.redis_url or "")
        self.redis = rq.connect(url, max_connections=32)
        self.waits = rq.connect(url, max_connections=self.config.max_queue + 16, retries=0,
                                read_timeout_s=None)
        with contextlib.suppress(Exception):  # down now: the monitor keeps trying
            await self._refresh()
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._monitor
        for client in (self.redis, self.waits):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    # -- hints and admission ---------------------------------------------------------------------
    def expect(self, n: int = 1) -> None:
        """Batching happens in the workers: nothing to expect here."""

    def arrived(self, n: int = 1) -> None:
        """See :meth:`expect`."""

    def incoming(self) -> contextlib.AbstractContextManager[None]:
        return nothing_expected()

    def retry_after(self) -> float:
        """About how long the backlog takes to clear, from the workers' time per job."""
        alive = max(1, len(self.workers))
        return self._job_s * self.config.max_backlog / alive

    async def admit(self) -> None:
        """The backlog (``XLEN``) under ``--max-backlog``, or 503 (before the body is read)."""
        try:
            if self.front.description is None:  # a worker may have come since the monitor ran
                await self._refresh()
            backlog = await self.redis.xlen(self.keys.jobs)
        except Exception as e:
            if not rq.is_down(e):
                raise
            self.metrics.rejected.labels("backend_unavailable").inc()
            raise rq.backend_unavailable(e, stage="admit") from None
        if backlog >= self.config.max_backlog:
            self.metrics.rejected.labels("backlog_full").inc()
            after = str(max(1, round(self.retry_after())))
            raise RequestProblem(503, "overloaded", f"the job backlog is full ({backlog} jobs "
                                 f"not yet done, --max-backlog {self.config.max_backlog}); "
                                 "retry later", stage="admit", headers={"Retry-After": after})

    # -- work ------------------------------------------------------------------------------------
    async def submit(self, item: Prepared) -> tuple[Outcome, BatchInfo]:
        """Send ``item`` (an :class:`Encoded`) as a job and wait for its answer."""
        assert isinstance(item, Encoded)
        job_id = uuid.uuid4().hex
        budget = seconds_left(self.config.timeout_s)
        t0 = time.perf_counter()
        entry = None
        try:
            entry = await self.redis.xadd(self.keys.jobs,
                                          rq.job_fields(job_id, item.data, item.options, budget))
            got = await self._wait(entry, job_id)
        except asyncio.CancelledError:  # gone or past the deadline: a job not read never runs
            if entry is not None:
                self._forget(entry)
            raise
        except Exception as e:
            if not rq.is_down(e):
                raise
            raise rq.backend_unavailable(e) from None
        if got is None:  # BLPOP's own timeout: the request's deadline is (about) here
            self._forget(entry)
            raise TimeoutError
        reply = rq.parse_reply(got[1])  # an error answer raises its RequestProblem
        round_trip = time.perf_counter() - t0
        item.width, item.height = reply.width, reply.height  # upright, as decoded
        item.decode_s += reply.decode_s
        queued = max(0.0, round_trip - reply.busy_s)
        return reply.outcome, BatchInfo(reply.batch_size, reply.reason, queued)

    async def _wait(self, entry: Any, job_id: str) -> Any:
        """BLPOP the job's reply for what is left of the deadline. A wait whose connection
        breaks is sent again, once, if the job is still there (its entry, or its reply: the
        connection was only stale, or dropped by the monitor after a restart); a job that is
        gone (Redis restarted without it) or a Redis that does not answer raises."""
        key = self.keys.reply(job_id)
        try:
            return await self.waits.blpop([key], timeout=self._left())
        except Exception as e:
            if not rq.is_down(e):
                raise
            try:
                async with self.redis.pipeline(transaction=False) as p:
                    there = await p.xrange(self.keys.jobs, entry, entry).exists(key).execute()
            except Exception:  # noqa: BLE001 - Redis down: the first error says it
                raise e from None
            if not (there[0] or there[1]):
                raise
            return await self.waits.blpop([key], timeout=self._left())

    def _left(self) -> float:
        """BLPOP's timeout: what is left of the request's deadline (10 ms at least)."""
        return max(0.01, seconds_left(self.config.timeout_s))

    def _forget(self, entry: Any) -> None:
        """Delete a job from the stream, in the background (a job not yet read never runs)."""

        async def xdel() -> None:
            with contextlib.suppress(Exception):
                await self.redis.xdel(self.keys.jobs, entry)

        task = asyncio.get_running_loop().create_task(xdel())
        self._background.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._background.discard)

    # -- the monitor -----------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Every heartbeat period: the description, the workers, Redis's identity."""
        while True:
            await asyncio.sleep(rq.HEARTBEAT_S)
            with contextlib.suppress(Exception):  # down: the requests say so themselves
                await self._refresh()

    async def _refresh(self) -> dict[str, Any]:
        """Read Redis's state (what ``/readyz`` and ``/metrics`` report) and remember it."""
        k = self.keys
        async with self.redis.pipeline(transaction=False) as p:
            p.info("server").get(k.model).smembers(k.workers).xlen(k.jobs)
            p.expire(k.jobs, rq.STREAM_TTL_S).hgetall(k.stats)
            info, model, names, backlog, _, stats = await p.execute()
        names = sorted(n.decode() for n in names)
        beats = await self.redis.mget([k.worker(n) for n in names]) if names else []
        alive = [orjson.loads(beat) for beat in beats if beat]
        gone = [name for name, beat in zip(names, beats, strict=True) if not beat]
        if gone:  # their heartbeat expired: dead (a clean stop removes its name itself)
            await self.redis.srem(k.workers, *gone)
        self.workers = alive
        self.front.update(orjson.loads(model) if model else None)
        per_job = [w["job_s"] for w in alive if w.get("job_s")]
        if per_job:
            self._job_s = sum(per_job) / len(per_job)
        run_id = info.get("run_id")
        if self._run_id is not None and run_id != self._run_id:
            # Redis restarted (or failed over): the jobs the waits are for are gone
            await self.waits.connection_pool.disconnect()
        self._run_id = run_id
        stats = {key.decode(): int(v) for key, v in stats.items()}
        return {"backlog": int(backlog), "stats": stats, "workers": alive}

    def _serving(self, workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The workers that serve MODEL (all of them when MODEL is not a file here)."""
        want = self.front.expected_sha256
        return [w for w in workers if want is None or w.get("sha256") == want]

    # -- what the routes report ------------------------------------------------------------------
    async def readiness(self) -> tuple[dict[str, Any], bool]:
        """Ready when Redis answers and at least one worker serving MODEL is alive."""
        try:
            state = await self._refresh()
        except Exception as e:  # noqa: BLE001 - any failure to read Redis: not ready
            return {"status": "backend_unavailable", "message": str(e)}, False
        serving = self._serving(state["workers"])
        doc = {"status": "ready" if serving else "no_workers", "backend": "redis",
               "backlog": state["backlog"], "workers": state["workers"]}
        if len(serving) < len(state["workers"]):
            doc["other_model_workers"] = len(state["workers"]) - len(serving)
        return doc, bool(serving)

    async def describe(self) -> dict[str, Any] | None:
        """The workers' description, with this web side's limits (those it enforces)."""
        with contextlib.suppress(Exception):
            await self._refresh()
        if self.front.description is None:
            return None
        c = self.config
        return {**self.front.description, "dispatch": "redis", "workers": len(self.workers),
                "score_threshold": c.score_threshold, "max_upload_bytes": c.max_upload_bytes,
                "max_pixels": c.max_pixels, "formats": list(c.formats),
                "max_backlog": c.max_backlog}

    async def metrics_text(self) -> bytes:
        """The queue's own metrics, read from Redis at scrape time."""
        from danlu.serve.metrics import redis_metrics_text

        try:
            state = await self._refresh()
        except Exception:  # noqa: BLE001 - the scrape still answers, saying Redis is down
            return redis_metrics_text(None)
        try:
            pending = await self.redis.xpending(self.keys.jobs, rq.GROUP)
            state["pending"] = int(pending["pending"])
        except Exception:  # noqa: BLE001 - no group yet (no worker ever started): none
            state["pending"] = 0
        return redis_metrics_text(state)


__all__ = ["RedisDispatcher"]
