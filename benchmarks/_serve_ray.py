"""The Ray Serve path of ``danlu bench serve --ray`` (see benchmarks/serve.py): what the Ray
backend (``danlu.serve.ray_backend``) adds over the in-process Engine, same model, same
images, same batch settings, on this machine.

* **The two paths**, each what ``danlu serve`` does once a request is read, through its
  dispatcher seam (``danlu.serve.dispatch``): ``front.prepare`` in a pool (announced with
  ``incoming()``, as the routes do), then ``dispatcher.submit``. *engine*:
  ``LocalDispatcher`` (decode here, the ``DynamicBatcher``, ``Engine.run_batch`` on the model
  thread). *ray*: ``RayDispatcher`` (the header checked here; a replica on a local Ray
  instance decodes, batches with ``@serve.batch`` and runs the same ``Engine.run_batch``).
  The HTTP front in front of either is the same app, so :func:`measure_ray` leaves it out and
  measures the difference itself; :func:`measure_ray_http` measures both through
  ``danlu serve`` and ``danlu serve --ray`` with the HTTP load generator.
* **The load** (:func:`measure_ray`): the closed loop of ``benchmarks/_serve_load.py``, on
  calls instead of HTTP requests: N clients, each sending back to back, taking JPEGs
  round-robin from one pool (``_serve_load.jpeg_images``: 256 x 256 ``shapes`` scenes);
  ``2 N`` warm-up requests (at least 4) not counted, then at most ``max_requests`` requests or
  ``max_seconds``; latency from the call to its answer; throughput = answers / window; each
  run summarized by ``_serve_load.summarize`` (the same :class:`LoadResult`).
* **Repeats.** Both paths stay loaded through the run and take turns (engine, ray, engine,
  ray... at each concurrency), so a load burst from another job on the machine hits both;
  each figure is the median over ``repeats`` runs, and every run is kept.
* **Resources.** One replica with ``replica_cpus`` (default: every CPU) and as many torch
  threads; the in-process model thread has torch's default (one per core). The local Ray
  instance gets every CPU and no dashboard.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import _serve_load as load

#: a call that answers one encoded image: its batch size, or raises
Call = Callable[[bytes], Awaitable[int]]


@dataclass
class RayComparison:
    """Ray vs the in-process Engine (seconds; req/s): medians over the repeats, and every
    run (``runs[path][concurrency]``)."""

    concurrencies: tuple[int, ...]
    throughput: dict[str, dict[int, float]]
    p50: dict[str, dict[int, float]]
    mean_batch: dict[str, dict[int, float | None]]
    runs: dict[str, dict[int, list[load.LoadResult]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def added_p50(self) -> float:
        """Ray's p50 minus the Engine's at one client (or the lowest concurrency)."""
        c = min(self.concurrencies)
        return self.p50["ray"][c] - self.p50["engine"][c]

    def ratio(self, concurrency: int) -> float:
        """Ray's throughput over the Engine's at ``concurrency`` (1.0: the same)."""
        return self.throughput["ray"][concurrency] / self.throughput["engine"][concurrency]

    def table(self) -> list[dict[str, Any]]:
        """One row per path and concurrency: the medians and the spread of the runs."""
        out = []
        for path in ("engine", "ray"):
            for c in self.concurrencies:
                tps = [r.throughput for r in self.runs[path][c]]
                out.append({"path": path, "clients": c, "req_s": self.throughput[path][c],
                            "req_s_min": min(tps), "req_s_max": max(tps),
                            "p50_s": self.p50[path][c], "mean_batch": self.mean_batch[path][c],
                            "runs": len(tps)})
        return out


# -- the closed loop on calls ----------------------------------------------------------------
async def _one(call: Call, data: bytes) -> load.Sample:
    """One call, classified as ``_serve_load`` classifies an HTTP answer."""
    from danlu.serve.problems import RequestProblem

    t0 = time.perf_counter()
    try:
        size: int | None = await call(data)
        status: int | str = 200
    except RequestProblem as p:
        size, status = None, p.status
    except Exception:  # noqa: BLE001 - counted as an error, as a transport error is
        size, status = None, "error"
    return load.Sample(t0, time.perf_counter() - t0, status, size)


async def closed_calls(call: Call, datas: list[bytes], concurrency: int, *,
                       max_requests: int = 400, max_seconds: float = 15.0,
                       warmup: int | None = None) -> load.LoadResult:
    """``_serve_load.closed_loop`` with ``call`` in place of the HTTP request (module doc)."""
    warmup = max(4, 2 * concurrency) if warmup is None else warmup
    counter = [0]

    async def client(limit: int, deadline: float, out: list[load.Sample]) -> None:
        while counter[0] < limit and time.perf_counter() < deadline:
            i = counter[0]
            counter[0] += 1
            out.append(await _one(call, datas[i % len(datas)]))

    if warmup:
        junk: list[load.Sample] = []
        end = time.perf_counter() + max(max_seconds, 30.0)
        await asyncio.gather(*(client(warmup, end, junk)
                               for _ in range(min(concurrency, warmup))))
    counter[0] = 0
    samples: list[load.Sample] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(client(max_requests, t0 + max_seconds, samples)
                           for _ in range(concurrency)))
    return load.summarize(samples, time.perf_counter() - t0, "closed", concurrency, None)


# -- the two paths ---------------------------------------------------------------------------
class _Path:
    """One way to the model, behind the service's own seam (a ``Dispatcher``): the upload
    checked or decoded in a pool as the routes do, then ``dispatcher.submit``."""

    def __init__(self, dispatcher: Any, threads: int) -> None:
        self.dispatcher = dispatcher
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="danlu-decode")
        self.options: Any = None

    async def start(self) -> None:
        await self.dispatcher.start()
        self.options = self.dispatcher.front.options()

    async def call(self, data: bytes) -> int:
        loop = asyncio.get_running_loop()
        front = self.dispatcher.front
        with self.dispatcher.incoming():  # as the routes do: an idle batch waits for it
            item = await loop.run_in_executor(self.pool, front.prepare, data, self.options)
        _, info = await self.dispatcher.submit(item)
        return info.size

    async def stop(self) -> None:
        await self.dispatcher.stop()
        self.pool.shutdown()


def engine_path(config: Any) -> _Path:
    """The in-process path: ``LocalDispatcher`` (the batcher) on ``Engine.open``."""
    from danlu.serve.dispatch import LocalDispatcher
    from danlu.serve.engine import Engine
    from danlu.serve.metrics import Metrics

    return _Path(LocalDispatcher(Engine.open(config), config, Metrics()), config.threads)


def ray_path(config: Any, replicas: int, replica_cpus: float) -> _Path:
    """The Ray path: ``RayDispatcher`` on a local Ray instance with every CPU."""
    from danlu.serve.metrics import Metrics
    from danlu.serve.ray_backend import RayDispatcher, RayOptions

    options = RayOptions(replicas=replicas, replica_cpus=replica_cpus,
                         local_cpus=os.cpu_count() or 1, app_name="danlu-bench")
    return _Path(RayDispatcher(config, Metrics(), options), config.threads)


def measure_ray(ckpt: str | Path, jpegs: list[bytes] | None = None, *,
                concurrencies: tuple[int, ...] = (1, 16), repeats: int = 3,
                max_requests: int = 400, max_seconds: float = 15.0, max_batch: int = 16,
                max_wait_ms: float = 5.0, score_threshold: float = 0.25, replicas: int = 1,
                replica_cpus: float | None = None,
                say: Callable[[str], None] = lambda msg: None) -> RayComparison:
    """Throughput at each concurrency and p50, the Ray path against the in-process Engine
    (module doc). ``say`` gets a line before each run."""
    from danlu.serve.config import ServeConfig

    jpegs = jpegs or load.jpeg_images(32)
    cpus = float(os.cpu_count() or 1)
    config = ServeConfig(str(ckpt), device="cpu", score_threshold=score_threshold,
                         max_batch=max_batch, max_wait_ms=max_wait_ms)
    say("starting the in-process engine and a local Ray instance with its replica")
    paths = {"engine": engine_path(config), "ray": ray_path(config, replicas, replica_cpus or cpus)}
    runs: dict[str, dict[int, list[load.LoadResult]]] = {
        "engine": {c: [] for c in concurrencies}, "ray": {c: [] for c in concurrencies}}

    async def main() -> None:
        started = []
        try:
            for path in paths.values():
                await path.start()
                started.append(path)
            for path in paths.values():  # past the NMS's numba load, the first batches
                await closed_calls(path.call, jpegs, 8, max_requests=48, max_seconds=60,
                                   warmup=0)
            for rep in range(repeats):
                for c in concurrencies:
                    for name, path in paths.items():
                        say(f"{name}: {c} client(s), run {rep + 1} of {repeats}")
                        runs[name][c].append(await closed_calls(
                            path.call, jpegs, c, max_requests=max_requests,
                            max_seconds=max_seconds))
        finally:
            for path in started:
                await path.stop()

    asyncio.run(main())
    return _summary(concurrencies, runs, {
        "model": str(ckpt), "images": len(jpegs), "max_batch": max_batch,
        "max_wait_ms": max_wait_ms, "replicas": replicas,
        "replica_cpus": replica_cpus or cpus, "cpus": cpus, "repeats": repeats})


def _summary(concurrencies: tuple[int, ...], runs: dict[str, dict[int, list[load.LoadResult]]],
             settings: dict[str, Any]) -> RayComparison:
    def med(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return statistics.median(kept) if kept else None

    tp = {p: {c: statistics.median(r.throughput for r in rs) for c, rs in by.items()}
          for p, by in runs.items()}
    p50 = {p: {c: statistics.median(r.p50 for r in rs) for c, rs in by.items()}
           for p, by in runs.items()}
    mb = {p: {c: med([r.mean_batch for r in rs]) for c, rs in by.items()}
          for p, by in runs.items()}
    return RayComparison(tuple(concurrencies), tp, p50, mb, runs, settings)


# -- through HTTP (once `danlu serve --ray` exists) ------------------------------------------
def measure_ray_http(ckpt: str | Path, jpegs: list[bytes] | None = None, *,
                     serve_args: tuple[str, ...] = (), ray_args: tuple[str, ...] = (),
                     concurrencies: tuple[int, ...] = (1, 16), repeats: int = 3,
                     max_requests: int = 400, max_seconds: float = 15.0,
                     say: Callable[[str], None] = lambda msg: None) -> RayComparison:
    """The same comparison through HTTP: ``danlu serve CKPT SERVE_ARGS`` against
    ``danlu serve CKPT SERVE_ARGS --ray RAY_ARGS``, both running at once, measured in turns
    by ``_serve_load.closed_loop``."""
    from benchmarks import _serve_peers as peers

    jpegs = jpegs or load.jpeg_images(32)
    bodies = [load.multipart_body(j) for j in jpegs]
    runs: dict[str, dict[int, list[load.LoadResult]]] = {
        "engine": {c: [] for c in concurrencies}, "ray": {c: [] for c in concurrencies}}
    say("starting danlu serve, and danlu serve --ray")
    with peers.ours_server(Path(ckpt), list(serve_args)) as url_engine, \
            peers.ours_server(Path(ckpt), [*serve_args, "--ray", *ray_args]) as url_ray:
        urls = {"engine": url_engine + "/v1/detect", "ray": url_ray + "/v1/detect"}
        for url in urls.values():
            load.closed_loop(url, bodies, 8, max_requests=48, max_seconds=60, warmup=0)
        for rep in range(repeats):
            for c in concurrencies:
                for name, url in urls.items():
                    say(f"{name} (HTTP): {c} client(s), run {rep + 1} of {repeats}")
                    runs[name][c].append(load.closed_loop(
                        url, bodies, c, max_requests=max_requests, max_seconds=max_seconds))
    return _summary(concurrencies, runs, {"model": str(ckpt), "images": len(jpegs),
                                          "serve_args": list(serve_args),
                                          "ray_args": list(ray_args), "repeats": repeats,
                                          "over": "http"})


__all__ = ["RayComparison", "measure_ray", "measure_ray_http", "closed_calls", "engine_path",
           "ray_path"]
