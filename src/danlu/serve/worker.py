"""``danlu worker MODEL --redis URL``: the model side of ``danlu serve --redis``, on any machine
that reaches the Redis (the keys: :mod:`danlu.serve.redis_queue`).

One worker is the local model path fed by a stream instead of HTTP: jobs are read with the
consumer group (``XREADGROUP ... COUNT max_batch BLOCK``), decoded and letterboxed in a thread
pool (:meth:`Engine.prepare <danlu.serve.engine.Engine.prepare>`: the same checks and errors
as the local service), batched by the same :class:`~danlu.serve.dispatch.LocalDispatcher`
(the dynamic batcher on one model thread; a sliced job runs alone), and answered once each:
one script (:data:`~danlu.serve.redis_queue.FINISH_LUA`) sets the done marker (``SET NX``),
pushes the reply, acks and deletes the entry (``XLEN`` = jobs not yet done). A batch's answers
go out in one pipeline.

* **Read-ahead**: at most ``2 x max_batch`` jobs in hand (one batch running, the next
  decoding), so a second worker gets its share of a burst.
* **A bad image** gets its 4xx as the answer; **a poison image** (the model raises on it) is
  found by running its batch again item by item: it is answered 500 ``model_error`` and
  dead-lettered, the others of its batch answered as usual.
* **Crash recovery**: every :data:`~danlu.serve.redis_queue.HEARTBEAT_S` (or a third of
  ``reclaim_after_s``, if shorter) the worker refreshes its heartbeat key and the idle time of
  the jobs it holds (``XCLAIM ... JUSTID``), so only a dead (or frozen) worker's jobs go idle;
  every ``reclaim_after_s / 2`` it takes over jobs idle for ``reclaim_after_s``
  (``XAUTOCLAIM``). A job delivered more than ``max_deliveries`` times (``XPENDING`` counts)
  is dead-lettered and answered 500 ``max_deliveries``.
* **A job past its deadline** (Redis's clock: the entry ID plus the job's budget) is answered
  504 without running the model.
* **Redis down**: the loops back off (0.1 s doubling to 2 s) and retry; jobs in hand keep
  their answers until Redis takes them; a lost consumer group is created again.
* **SIGTERM / SIGINT**: stop reading, finish and answer the jobs in hand, leave the group and
  exit 0 (a rolling restart loses nothing); a second signal exits 1 at once (the jobs in hand
  are then reclaimed by another worker).

Fault injection, for tests only and off by default: ``DANLU_WORKER_FAULTS`` holds
``poison=WxH`` (a model call holding an image of exactly W x H pixels raises) and / or
``delay_s=S`` (each model call sleeps S seconds first), comma-separated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson

from danlu.serve import redis_queue as rq
from danlu.serve.batcher import BatchInfo
from danlu.serve.config import ServeConfig
from danlu.serve.dispatch import LocalDispatcher
from danlu.serve.engine import Engine, Prepared
from danlu.serve.metrics import Metrics
from danlu.serve.problems import RequestProblem, deadline

#: the environment variable of the test-only fault injection (module doc)
FAULTS_ENV = "DANLU_WORKER_FAULTS"
#: how long one XREADGROUP blocks (ms): the longest a SIGTERM waits for the read in flight
BLOCK_MS = 500


@dataclass
class WorkerConfig:
    """Everything ``danlu worker`` was told.

    Args:
        serve: the model and batching settings (model, device, max_batch, max_wait_ms, the
            decode limits, drain_s: how long the jobs in hand may take after SIGTERM).
        redis_url: the Redis the web side uses.
        prefix: its key prefix (``--redis-prefix``).
        name: this worker's consumer name (None: ``host-pid``).
        reclaim_after_s: a job held this long by a silent worker is taken over.
        max_deliveries: a job delivered more often than this is dead-lettered.
    """

    serve: ServeConfig
    redis_url: str
    prefix: str = "danlu"
    name: str | None = None
    reclaim_after_s: float = 10.0
    max_deliveries: int = 3
    faults: dict[str, Any] = field(default_factory=dict)


def parse_faults(text: str | None) -> dict[str, Any]:
    """``"poison=64x48,delay_s=2"`` -> ``{"poison": (64, 48), "delay_s": 2.0}``."""
    out: dict[str, Any] = {}
    for part in (text or "").split(","):
        key, _, value = part.strip().partition("=")
        if key == "poison":
            w, _, h = value.partition("x")
            out["poison"] = (int(w), int(h))
        elif key == "delay_s":
            out["delay_s"] = float(value)
    return out


class _FaultyDispatcher(LocalDispatcher):
    """The local dispatcher with the test-only faults of :data:`FAULTS_ENV`."""

    faults: dict[str, Any] = {}

    def _inject(self, items: list[Prepared]) -> None:
        time.sleep(self.faults.get("delay_s", 0.0))
        poison = self.faults.get("poison")
        if poison is not None and any((it.width, it.height) == poison for it in items):
            raise RuntimeError(f"fault injection: a poison image of {poison[0]}x{poison[1]}")

    def model_batch(self, items: list[Prepared]) -> list:
        self._inject(items)
        return super().model_batch(items)

    def model_sliced(self, item: Prepared) -> Any:
        self._inject([item])
        return super().model_sliced(item)


class _Backoff:
    """0.1 s doubling to 2 s while Redis is down; says so once per outage."""

    def __init__(self, say: Any) -> None:
        self.delay, self.say, self.down = 0.1, say, False

    async def wait(self, error: BaseException) -> None:
        if not self.down:
            self.say(f"Redis unreachable ({error}); retrying")
            self.down = True
        await asyncio.sleep(self.delay)
        self.delay = min(2.0, self.delay * 2)

    def ok(self) -> None:
        if self.down:
            self.say("Redis is back")
        self.delay, self.down = 0.1, False


class Worker:
    """One worker process's loops (the module doc); :meth:`run` until stopped.

    Args:
        config: the settings.
        engine: a ready engine (tests); None: built from ``config.serve`` at :meth:`run`.
    """

    def __init__(self, config: WorkerConfig, engine: Engine | None = None) -> None:
        self.config = config
        self.engine = engine
        self.keys = rq.Keys(config.prefix)
        self.name = config.name or rq.default_worker_name()
        self.cap = 2 * config.serve.max_batch
        self.in_hand: dict[str, str] = {}  # entry ID -> job id, until its answer is written
        self.stopping = asyncio.Event()
        self.forced = asyncio.Event()
        self.batches = 0
        self.done = 0
        self.started = time.time()
        self._room = asyncio.Event()
        self._answers: asyncio.Queue = asyncio.Queue()
        self._stats: Counter[str] = Counter()  # to HINCRBY with the next answers
        self._job_s: float | None = None
        self._offset_ms = 0.0  # Redis's clock minus ours
        self._tasks: set[asyncio.Task] = set()
        self.redis: Any = None
        self.pool: ThreadPoolExecutor | None = None
        self.dispatcher: LocalDispatcher | None = None

    def say(self, message: str) -> None:
        print(f"danlu worker {self.name}: {message}", file=sys.stderr, flush=True)

    # -- life ------------------------------------------------------------------------------------
    async def run(self) -> int:
        """Load the model, join the group, serve jobs until SIGTERM; the exit status (1: the
        jobs in hand were not all answered; the model thread may still be busy, see
        :func:`run_worker`)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        serve = self.config.serve
        if self.engine is None:
            self.engine = await asyncio.to_thread(Engine.open, serve)
        self.pool = ThreadPoolExecutor(serve.threads, thread_name_prefix="danlu-decode")
        cls = _FaultyDispatcher if self.config.faults else LocalDispatcher
        self.dispatcher = cls(self.engine, serve, Metrics(), on_batch=self._on_batch)
        if self.config.faults:
            self.dispatcher.faults = self.config.faults
            self.say(f"FAULT INJECTION ON ({FAULTS_ENV}: {self.config.faults}): for tests only")
        await self.dispatcher.start()
        if serve.warmup:
            await loop.run_in_executor(self.pool, self.engine.warm_decoders)
        self.description = orjson.dumps(self.engine.describe())
        self.redis = rq.connect(self.config.redis_url, max_connections=16,
                                read_timeout_s=BLOCK_MS / 1000 + 10)
        clean = False
        try:
            if not await self._join():
                clean = True  # stopped before it took a job
                return 0
            self.say(f"ready ({self.engine.name}, sha256 {self.engine.checkpoint_sha256}; "
                     f"{rq.redact(self.config.redis_url)} prefix {self.config.prefix}; max "
                     f"batch {serve.max_batch})")
            loops = [loop.create_task(c) for c in (self._heartbeats(), self._reclaims(),
                                                    self._writes())]
            await self._reads()
            clean = await self._drain(serve.drain_s)
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            if clean:
                await self._leave()
            else:
                self.say("stopping with jobs in hand: another worker will reclaim them")
            return 0 if clean else 1
        finally:
            if clean:  # else the model thread may be inside a call that never ends
                await self.dispatcher.stop()
            self.pool.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    def stop(self) -> None:
        """The first call stops reading (finish what is in hand); the second stops now."""
        if self.stopping.is_set():
            self.forced.set()
        self.stopping.set()
        self._room.set()

    async def _join(self) -> bool:
        """The consumer group exists and the first heartbeat is out (waits for Redis)."""
        backoff = _Backoff(self.say)
        while not self.stopping.is_set():
            try:
                await self._ensure_group()
                await self._beat()
                backoff.ok()
                return True
            except Exception as e:
                if not rq.is_down(e):
                    raise
                await backoff.wait(e)
        return False

    async def _ensure_group(self) -> None:
        """``XGROUP CREATE P:jobs workers 0 MKSTREAM`` (from 0: jobs added before a worker
        (re)created the group are read too)."""
        import redis.exceptions as rex

        try:
            await self.redis.xgroup_create(self.keys.jobs, rq.GROUP, id="0", mkstream=True)
        except rex.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def _drain(self, limit_s: float) -> bool:
        """Wait until every job in hand is answered (True), or forced / ``limit_s`` (False)."""
        t_end = time.monotonic() + limit_s
        while self.in_hand or self._tasks:
            if self.forced.is_set() or time.monotonic() > t_end:
                return False
            await asyncio.sleep(0.02)
        return True

    async def _leave(self) -> None:
        """Heartbeat gone at once (``/readyz`` follows); the consumer removed if it holds
        nothing (DELCONSUMER would drop what it holds)."""
        k = self.keys
        with contextlib.suppress(Exception):
            await self.redis.delete(k.worker(self.name))
            await self.redis.srem(k.workers, self.name)
            held = await self.redis.xpending_range(k.jobs, rq.GROUP, "-", "+", 1,
                                                   consumername=self.name)
            if not held:
                await self.redis.xgroup_delconsumer(k.jobs, rq.GROUP, self.name)

    # -- reading ---------------------------------------------------------------------------------
    async def _reads(self) -> None:
        """Read new jobs while there is room in hand, until stopped."""
        import redis.exceptions as rex

        backoff = _Backoff(self.say)
        count_max = self.config.serve.max_batch
        while not self.stopping.is_set():
            room = self.cap - len(self.in_hand)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                got = await self.redis.xreadgroup(rq.GROUP, self.name, {self.keys.jobs: ">"},
                                                  count=min(room, count_max), block=BLOCK_MS)
                backoff.ok()
            except rex.ResponseError as e:
                if "NOGROUP" not in str(e):  # e.g. WRONGTYPE: the prefix's key is not ours
                    self.say(f"cannot read {self.keys.jobs} ({e}); retrying")
                    await asyncio.sleep(2.0)
                    continue
                with contextlib.suppress(Exception):  # Redis lost it (a restart): again
                    await self._ensure_group()
                continue
            except Exception as e:
                if not rq.is_down(e):
                    raise
                await backoff.wait(e)
                continue
            for _stream, entries in got or []:
                for entry, fields in entries:
                    self._take(entry, fields, 1)

    def _take(self, entry: bytes | str, fields: dict[bytes, bytes] | None, deliveries: int
              ) -> None:
        """Start answering one job (a task)."""
        entry = entry.decode() if isinstance(entry, bytes) else entry
        if fields is None or entry in self.in_hand:
            return
        self.in_hand[entry] = fields.get(b"id", entry.encode()).decode(errors="replace")
        task = asyncio.get_running_loop().create_task(self._handle(entry, fields, deliveries))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, entry: str, fields: dict[bytes, bytes], deliveries: int) -> None:
        """One job: check, decode, batch, answer (an error is an answer too)."""
        t0 = time.perf_counter()
        dead = ""
        try:
            job = rq.Job.parse(entry, fields)
            if deliveries > self.config.max_deliveries:
                dead = (f"delivered {deliveries} times (--max-deliveries "
                        f"{self.config.max_deliveries}): the workers holding it stopped")
                raise RequestProblem(500, "max_deliveries", f"the job was {dead}; it is in "
                                     "the dead-letter stream", stage="queue")
            if time.time() * 1000 + self._offset_ms > job.expires_ms:
                self._stats["expired"] += 1
                raise deadline("queue", job.budget_s)
            assert self.dispatcher is not None and self.engine is not None
            with self.dispatcher.incoming():  # an idle batch waits for it while it decodes
                item = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.engine.prepare, job.image, job.options)
            outcome, info = await self.dispatcher.submit(item)
            answer = rq.outcome_reply(outcome, item.width, item.height, item.decode_s,
                                      info.size, info.reason, self.name,
                                      time.perf_counter() - t0)
        except RequestProblem as p:
            if p.code == "model_error":
                dead = p.message
                self.say(f"dead-lettered job {self.in_hand.get(entry)}: {p.message}")
            answer = rq.problem_reply(p, self.name)
        except Exception as e:  # noqa: BLE001 - a bug here must not stop the worker
            answer = rq.problem_reply(RequestProblem(500, "worker_error", f"the worker "
                                                     f"failed ({type(e).__name__}: {e})",
                                                     stage="infer"), self.name)
        await self._answers.put((entry, self.in_hand.get(entry, entry), answer, dead,
                                 deliveries))

    def _on_batch(self, info: BatchInfo, took_s: float) -> None:
        self.batches += 1
        self._stats[f"batches:{info.reason}"] += 1
        self._stats["batch_images"] += info.size
        per_job = took_s / max(1, info.size)
        self._job_s = per_job if self._job_s is None else 0.8 * self._job_s + 0.2 * per_job

    # -- answering -------------------------------------------------------------------------------
    async def _writes(self) -> None:
        """Write the answers as they come, all those ready in one pipeline."""
        while True:
            batch = [await self._answers.get()]
            while not self._answers.empty():
                batch.append(self._answers.get_nowait())
            stats, self._stats = self._stats, Counter()
            await self._write(batch, stats)
            for entry, *_ in batch:
                self.in_hand.pop(entry, None)
            self.done += len(batch)
            self._room.set()

    async def _write(self, batch: list[tuple], stats: Counter[str]) -> None:
        """One pipeline of finish scripts (and the counters); retried while Redis is down
        (the script is idempotent: a job answered already is not answered again)."""
        backoff = _Backoff(self.say)
        while True:
            try:
                async with self.redis.pipeline(transaction=False) as p:
                    for entry, job_id, answer, dead, deliveries in batch:
                        keys, args = rq.finish_args(self.keys, entry, job_id, answer,
                                                    self.name, dead, deliveries)
                        p.eval(rq.FINISH_LUA, len(keys), *keys, *args)
                    for key, n in stats.items():
                        p.hincrby(self.keys.stats, key, n)
                    results = await p.execute(raise_on_error=False)
                backoff.ok()
                for (_entry, job_id, *_), r in zip(batch, results, strict=False):
                    if isinstance(r, Exception):  # this job's own error: running it again
                        self.say(f"cannot answer job {job_id} ({r})")  # would repeat it
                return
            except Exception as e:
                if not rq.is_down(e):  # not Redis: let these jobs go idle, to be reclaimed
                    self.say(f"cannot write {len(batch)} answer(s) ({type(e).__name__}: {e})")
                    return
                if self.forced.is_set():
                    return
                await backoff.wait(e)
                stats = Counter()  # counted at most once

    # -- heartbeats and reclaiming ---------------------------------------------------------------
    async def _heartbeats(self) -> None:
        # at least three beats per reclaim period: the jobs a live worker holds never look idle
        period = min(rq.HEARTBEAT_S, self.config.reclaim_after_s / 3)
        while True:
            await asyncio.sleep(period)
            with contextlib.suppress(Exception):  # down: the read loop says so
                await self._beat()

    async def _beat(self) -> None:
        """The heartbeat, the model description, the keys' lifetimes, the held jobs' idle
        time, and Redis's clock (one pipeline)."""
        assert self.engine is not None
        k = self.keys
        doc = {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
               "model": self.engine.name, "checkpoint": str(self.config.serve.model),
               "sha256": self.engine.checkpoint_sha256, "device": str(self.engine.describe()
                                                                      ["device"]),
               "batches": self.batches, "jobs": self.done, "in_hand": len(self.in_hand),
               "job_s": self._job_s, "started": self.started}
        held = list(self.in_hand)
        async with self.redis.pipeline(transaction=False) as p:
            p.time()  # first: results[0]
            p.set(k.worker(self.name), orjson.dumps(doc), ex=rq.HEARTBEAT_TTL_S)
            p.sadd(k.workers, self.name).expire(k.workers, rq.STATS_TTL_S)
            p.set(k.model, self.description, ex=rq.MODEL_TTL_S)
            p.expire(k.jobs, rq.STREAM_TTL_S).expire(k.stats, rq.STATS_TTL_S)
            p.expire(k.dead, rq.DEAD_TTL_S)
            if held:
                p.xclaim(k.jobs, rq.GROUP, self.name, 0, held, justid=True)
            sent = time.time()
            results = await p.execute(raise_on_error=False)
        got = time.time()
        now = results[0]
        if isinstance(now, tuple | list):
            self._offset_ms = now[0] * 1000 + now[1] / 1000 - (sent + got) * 500
        for r in results:
            if isinstance(r, Exception):
                raise r

    async def _reclaims(self) -> None:
        """Take over the jobs a silent worker holds (module doc)."""
        period = max(0.1, min(self.config.reclaim_after_s / 2, 5.0))
        idle_ms = int(self.config.reclaim_after_s * 1000)
        while not self.stopping.is_set():
            await asyncio.sleep(period)
            room = self.cap - len(self.in_hand)
            if room <= 0 or self.stopping.is_set():
                continue
            with contextlib.suppress(Exception):  # down, or no group yet: the next round
                await self._reclaim(idle_ms, room)

    async def _reclaim(self, idle_ms: int, room: int) -> None:
        k = self.keys
        _, claimed, _ = await self.redis.xautoclaim(k.jobs, rq.GROUP, self.name, idle_ms,
                                                    "0-0", count=room)
        claimed = [(e, f) for e, f in claimed if f is not None]
        if not claimed:
            return
        async with self.redis.pipeline(transaction=False) as p:
            for entry, _ in claimed:
                p.xpending_range(k.jobs, rq.GROUP, entry, entry, 1)
            p.hincrby(k.stats, "reclaimed", len(claimed))  # now: this worker may die next
            counts = (await p.execute())[:-1]
        self.say(f"reclaimed {len(claimed)} job(s) idle over "
                 f"{self.config.reclaim_after_s:g} s")
        for (entry, fields), rows in zip(claimed, counts, strict=True):
            self._take(entry, fields, int(rows[0]["times_delivered"]) if rows else 1)


def run_worker(config: WorkerConfig, engine: Engine | None = None) -> int:
    """Run a worker until it is stopped; returns its exit status (0 after a clean stop).

    After an unclean stop (a second signal, or ``drain_s`` passed) the process exits here
    with status 1 at once: its model thread may be inside a call that never ends, and the
    interpreter would wait for it."""
    code = asyncio.run(Worker(config, engine).run())
    if code != 0:
        sys.stderr.flush()
        os._exit(code)
    return code


__all__ = ["Worker", "WorkerConfig", "run_worker", "parse_faults", "FAULTS_ENV", "BLOCK_MS"]
