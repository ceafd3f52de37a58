"""The model side of ``danlu serve --ray``: a Ray Serve deployment of the Engine and its
batching. The web side is :mod:`danlu.serve.ray_backend`.

A replica (:class:`ReplicaCore`, deployed as ``DanluReplica`` in the application ``danlu``)
gets one call per upload: the **encoded** bytes as the client sent them, checked from their
header on the web side, and the validated :class:`~danlu.serve.engine.DetectOptions`. It runs
``Engine.prepare`` (decode, letterbox) in its decode pool, queues the request in
``@serve.batch`` (``max_batch``, ``max_wait_ms``), runs ``Engine.run_batch`` on its one model
thread (a sliced request alone: ``Engine.run_sliced``), and returns a :class:`RemoteOutcome`;
a :class:`ProblemDoc` for an upload it cannot decode; a
:class:`~danlu.serve.dispatch.ModelFailure` for an image the model raised on (a batch that
raises runs again image by image, so only that image fails, as in the local dispatcher).

Ray is imported only inside functions (``import danlu`` and ``--help`` stay cheap); the Ray
class is built on first use (:func:`replica_class`), and this module's ``__getattr__`` hands
it out by name, so that Ray pickles it by reference (the replicas import danlu).

:func:`build_app` is the application builder of a RayService
(``import_path: danlu.serve.ray_replica:build_app``).
"""

from __future__ import annotations

import asyncio
import functools
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from danlu.errors import ConfigError
from danlu.serve.batcher import BatchInfo
from danlu.serve.config import ServeConfig
from danlu.serve.dispatch import ModelFailure
from danlu.serve.engine import DetectOptions, Engine, Outcome, Prepared
from danlu.serve.problems import RequestProblem

#: the Serve application's default name, and the deployment's name inside it
APP_NAME = "danlu"
DEPLOYMENT = "DanluReplica"

#: what one replica answers for one upload
Answer = Any  # RemoteOutcome | ProblemDoc | ModelFailure


@dataclass(frozen=True)
class RayOptions:
    """Where and how the replicas run (the ``danlu serve --ray`` options).

    Args:
        address: a Ray cluster (``--ray-address``: ``auto``, ``HOST:6379``); None: start a
            local instance in this process.
        replicas: the replica count (``--replicas``), or the autoscaling ceiling.
        autoscale: scale between 1 and ``replicas`` on ongoing requests per replica.
        target_ongoing: the ongoing requests per replica autoscaling aims at (None:
            ``max_batch``, one full batch).
        autoscaling: more of Ray's ``autoscaling_config`` (``upscale_delay_s``...).
        replica_cpus: Ray CPUs per replica (``ray_actor_options``); its torch threads are
            this, rounded down, at least 1.
        replica_gpus: Ray GPUs per replica (0: none; set ``--device cuda`` with it).
        local_cpus: the CPUs a local instance offers (None: Ray counts them).
        app_name: the Serve application's name.
        deploy: deploy the application (deleted when the web side stops); False: attach to
            one deployed by someone else (a KubeRay RayService).
        retries: how often a request is resent when its replica dies under it.
    """

    address: str | None = None
    replicas: int = 1
    autoscale: bool = False
    target_ongoing: float | None = None
    autoscaling: dict[str, Any] | None = None
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    local_cpus: int | None = None
    app_name: str = APP_NAME
    deploy: bool = True
    retries: int = 2

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ConfigError("--replicas must be at least 1, replica CPUs and GPUs >= 0")

    @classmethod
    def from_config(cls, config: Any) -> RayOptions:
        """The options a :class:`ServeConfig` carries (``ray_address``, ``replicas``,
        ``autoscale``, ``replica_cpus``, ``replica_gpus``, ``ray_app``, ``ray_deploy``;
        defaults for those it has not)."""
        names = {"ray_address": "address", "replicas": "replicas", "autoscale": "autoscale",
                 "replica_cpus": "replica_cpus", "replica_gpus": "replica_gpus",
                 "ray_app": "app_name", "ray_deploy": "deploy"}
        return cls(**{ours: getattr(config, theirs) for theirs, ours in names.items()
                      if getattr(config, theirs, None) is not None})

    @property
    def threads(self) -> int:
        """The torch threads of one replica."""
        return max(1, math.floor(self.replica_cpus))


@dataclass
class RemoteOutcome(Outcome):
    """An :class:`Outcome` from a replica, with what the web side's answer needs besides it:
    the image's upright size, its decode time, the replica and the batch it ran in
    (``batch.queue_s``: its wait on the replica; ``batch_s``: the batch's model time)."""

    width: int = 0
    height: int = 0
    decode_s: float = 0.0
    replica: str = ""
    batch: BatchInfo | None = None
    batch_id: str = ""
    batch_s: float = 0.0


@dataclass(frozen=True)
class ProblemDoc:
    """A :class:`RequestProblem` as plain data: the exception itself does not survive a
    pickle (its constructor takes more than its message)."""

    status: int
    code: str
    message: str
    stage: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, problem: RequestProblem) -> ProblemDoc:
        return cls(problem.status, problem.code, problem.message, problem.stage,
                   dict(problem.headers))

    def problem(self) -> RequestProblem:
        return RequestProblem(self.status, self.code, self.message, stage=self.stage,
                              headers=dict(self.headers))


# -- the settings that travel ----------------------------------------------------------------
def replica_config(config: ServeConfig) -> dict[str, Any]:
    """The settings a replica gets, as plain data: the model path made absolute when it is a
    local file (a replica's working folder is not ours), no token (replicas answer only Ray
    calls), one worker, no Redis."""
    model = str(Path(config.model).resolve()) if Path(config.model).exists() else config.model
    extra = {"redis_url": None} if hasattr(config, "redis_url") else {}
    return asdict(replace(config, model=model, token=None, workers=1, **extra))


def config_from_doc(doc: dict[str, Any]) -> ServeConfig:
    """:func:`replica_config`'s data (or a RayService's ``args``) -> :class:`ServeConfig`;
    unknown keys are ignored, lists become tuples."""
    known = {f.name for f in fields(ServeConfig)}
    return ServeConfig(**{k: (tuple(v) if isinstance(v, list) else v)
                          for k, v in doc.items() if k in known})


def deployment_options(config: ServeConfig, options: RayOptions) -> dict[str, Any]:
    """The ``serve.deployment`` options (docs/serve.md, section Ray Serve, says why)."""
    gpus = {"num_gpus": options.replica_gpus} if options.replica_gpus else {}
    doc: dict[str, Any] = {
        "name": DEPLOYMENT, "ray_actor_options": {"num_cpus": options.replica_cpus, **gpus},
        # at least one batch running while the next fills (Ray's default, 5, would cap every
        # batch at 5), and every request the web side admits (--max-queue): past this limit
        # Ray's router holds requests back and retries them with growing waits, which left one
        # replica idle between batches at 64 clients (16 req/s instead of 75)
        "max_ongoing_requests": max(2 * config.max_batch, config.max_queue),
        # in-flight requests finish when a replica is scaled down or replaced
        "graceful_shutdown_timeout_s": max(1.0, config.drain_s),
        # a model that cannot load fails the deployment after 3 tries, not Ray's 20
        "max_constructor_retry_count": 3,
    }
    if options.autoscale:
        doc["autoscaling_config"] = {
            "min_replicas": 1, "max_replicas": options.replicas,
            "target_ongoing_requests": options.target_ongoing or float(config.max_batch),
            **(options.autoscaling or {})}
    else:
        doc["num_replicas"] = options.replicas
    return doc


# -- the replica -----------------------------------------------------------------------------
class ReplicaCore:
    """The model work of one replica: the Engine on its model thread, a decode pool, the
    batch handler. :func:`replica_class` makes the Ray class (:meth:`batched` is
    ``@serve.batch`` there); without Ray each request is its own batch.

    Args:
        config: :func:`replica_config`'s data.
        threads: torch threads on the model thread.
    """

    def __init__(self, config: dict[str, Any], threads: int = 1) -> None:
        self.config = config_from_doc(config)
        self.engine = Engine.open(self.config)
        assert self.engine.thread is not None
        self.engine.thread.submit(_torch_threads, threads).result()
        self.pool = ThreadPoolExecutor(self.config.decode_threads or max(2, threads),
                                       thread_name_prefix="danlu-decode")
        self.name, self._batches = _replica_name(), 0
        self._ongoing = 0  # requests on this replica: decoding, waiting, or in a batch
        self._busy = False  # the last batch had company: later requests wait to batch
        self._free = asyncio.Event()  # set while the model thread has no batch
        self._free.set()
        if self.config.warmup:
            self.engine.thread.submit(self.engine.warmup).result()
            self.pool.submit(self.engine.warm_decoders).result()

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/model`` document of this replica's Engine."""
        return self.engine.describe()

    async def detect(self, data: bytes, options: DetectOptions) -> Answer:
        """One upload -> its answer. As danlu's batcher does: alone on a quiet replica it
        runs at once (``idle``); otherwise it joins the queue once the model is free, so
        those that arrived while a batch ran ride in the next together (``@serve.batch``
        alone forms that batch from the first of them, then another from the rest)."""
        self._ongoing += 1
        try:
            try:
                item = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.engine.prepare, data, options)
            except RequestProblem as p:
                return ProblemDoc.of(p)
            if options.slice_size is not None:
                return await self._sliced(item)
            if self._free.is_set() and not self._busy and self._ongoing == 1:
                return (await self.run_batch([(item, time.perf_counter())], "idle"))[0]
            await self._free.wait()
            return await self.batched((item, time.perf_counter()))
        finally:
            self._ongoing -= 1

    async def batched(self, entry: tuple[Prepared, float]) -> Answer:
        """One request through the batch handler (the Ray class batches these)."""
        return (await self.run_batch([entry]))[0]

    async def run_batch(self, entries: list[tuple[Prepared, float]], reason: str = ""
                        ) -> list[Answer]:
        """``(prepared upload, when it was queued)`` pairs -> their answers, from one
        ``Engine.run_batch`` call on the model thread."""
        started = time.perf_counter()
        items = [item for item, _ in entries]
        self._free.clear()
        try:
            outs = await asyncio.get_running_loop().run_in_executor(
                self.engine.thread, _isolated, self.engine.run_batch, items)
        finally:
            self._free.set()
            # company: others in the batch, or arrived while it ran (counted in _ongoing)
            self._busy = len(items) > 1 or self._ongoing > len(items)
        took = time.perf_counter() - started
        self._batches += 1
        # a @serve.batch batch leaves when it is full or its wait is over
        reason = reason or ("full" if len(items) >= self.config.max_batch else "timeout")
        batch_id = f"{self.name}/{self._batches}"
        return [self._remote(item, out, BatchInfo(len(items), reason, started - queued),
                             batch_id, took)
                for (item, queued), out in zip(entries, outs, strict=True)]

    async def _sliced(self, item: Prepared) -> Answer:
        """A sliced request, alone on the model thread (after the batch it finds there)."""
        t0 = time.perf_counter()
        out = (await asyncio.get_running_loop().run_in_executor(
            self.engine.thread, _isolated, lambda xs: [self.engine.run_sliced(xs[0])],
            [item]))[0]
        waited = max(0.0, time.perf_counter() - t0 - getattr(out, "infer_s", 0.0))
        self._batches += 1
        return self._remote(item, out, BatchInfo(1, "sliced", waited),
                            f"{self.name}/{self._batches}", getattr(out, "infer_s", 0.0))

    def _remote(self, item: Prepared, out: Outcome | ModelFailure, info: BatchInfo,
                batch_id: str, took: float) -> Answer:
        if isinstance(out, ModelFailure):
            return out
        return RemoteOutcome(out.detections, out.infer_s, out.post_s, dict(out.extra),
                             width=item.width, height=item.height, decode_s=item.decode_s,
                             replica=self.name, batch=info, batch_id=batch_id, batch_s=took)


def _isolated(run: Any, items: list[Prepared]) -> list[Outcome | ModelFailure]:
    """``run(items)``; when it raises, each item again alone, so only the images the model
    raises on fail (a :class:`ModelFailure` each) and the rest of the batch is answered."""
    try:
        return list(run(items))
    except Exception as e:  # noqa: BLE001 - isolated below, item by item
        if len(items) == 1:
            return [ModelFailure(e)]
    out: list[Outcome | ModelFailure] = []
    for it in items:
        try:
            out.extend(run([it]))
        except Exception as e:  # noqa: BLE001 - this item's own failure
            out.append(ModelFailure(e))
    return out


def _torch_threads(n: int) -> None:
    """Set torch's threads (called on the model thread: its OpenMP team is the one used)."""
    import torch

    torch.set_num_threads(max(1, int(n)))


def _replica_name() -> str:
    """The Ray actor name of the replica this runs in; ``local`` outside Ray Serve."""
    if "ray.serve" not in sys.modules:  # not in a replica: no need to import Ray
        return "local"
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.to_full_id_str()
    except Exception:  # noqa: BLE001 - not in a replica (ReplicaCore alone, tests)
        return "local"


@functools.cache
def replica_class() -> type:
    """The Ray Serve class of :class:`ReplicaCore` (built once; imports Ray). Its batch
    limits come from the config, set in ``__init__`` with the setters ``@serve.batch``
    gives its method (the class is built before any config is known)."""
    from ray import serve

    class DanluReplica(ReplicaCore):
        def __init__(self, config: dict[str, Any], threads: int = 1) -> None:
            super().__init__(config, threads)
            self.batched.set_max_batch_size(self.config.max_batch)
            self.batched.set_batch_wait_timeout_s(self.config.max_wait_ms / 1000.0)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
        async def batched(self, entries: list[tuple[Prepared, float]]) -> list[Answer]:
            return await self.run_batch(entries)

    # found again by name (module __getattr__): Ray pickles it by reference, not by value
    DanluReplica.__qualname__ = DEPLOYMENT
    DanluReplica.__module__ = __name__
    return DanluReplica


def __getattr__(name: str) -> Any:
    if name == DEPLOYMENT:
        return replica_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def bind(config: ServeConfig, options: RayOptions) -> Any:
    """The Serve application (``serve.run`` it): the deployment, bound to the config."""
    import inspect

    from ray import serve

    # a setting this Ray does not know yet is left to its default (max_constructor_retry_count
    # came after 2.49)
    known = inspect.signature(serve.deployment).parameters
    settings = {k: v for k, v in deployment_options(config, options).items() if k in known}
    return serve.deployment(replica_class(), **settings).bind(replica_config(config),
                                                              options.threads)


def build_app(args: dict[str, Any]) -> Any:
    """Ray Serve's application builder (``import_path: danlu.serve.ray_replica:build_app``
    in a RayService): ``args`` are :class:`ServeConfig` fields (``model`` at least) and
    :class:`RayOptions` fields (``replicas``, ``autoscale``, ``replica_cpus``...)."""
    ray_keys = {f.name for f in fields(RayOptions)}
    options = RayOptions(**{k: v for k, v in args.items() if k in ray_keys})
    config = config_from_doc({k: v for k, v in args.items() if k not in ray_keys})
    return bind(config, options)


__all__ = ["RayOptions", "RemoteOutcome", "ProblemDoc", "ReplicaCore", "replica_class", "bind",
           "build_app", "deployment_options", "replica_config", "config_from_doc", "APP_NAME",
           "DEPLOYMENT"]
