"""The scale-out rows of ``danlu bench serve --redis`` and ``--ray`` (benchmarks/serve.py): the
same model, bodies and load generator as the one-machine benchmark, for ``danlu serve --redis``
with ``danlu worker`` processes, and for ``danlu serve --ray`` with Ray Serve replicas. Every
process (web side, workers or replicas, Redis or Ray, the load generator) shares this
machine's cores.

* **Redis** (``--redis``): a real ``redis-server`` on a free loopback port (``--save ""
  --appendonly no``), ``danlu serve CKPT --redis URL`` and ``danlu worker`` processes, each
  ``--max-batch 16 --max-wait-ms 5 --device cpu``. Skipped, with a note, without
  ``redis-server``.
* **Ray Serve** (``--ray``): ``danlu serve CKPT --ray --replicas N --replica-cpus C`` with the
  same batch settings; the command starts its own local Ray instance (every CPU, no
  dashboard) and deletes it on exit. Skipped, with a note, without the ``ray`` extra.

Rows, for each backend:

* **one client, paired**: ``danlu serve`` (the in-process batcher) and the backend with one
  worker (Redis) or one replica of every CPU (Ray) both running, each request sent to one
  then the other with the same body (``_serve_load.paired_latency``: 400 turns, ``--quick``
  30, after 10 not counted), so both see the same machine at the same moments; the median of
  the paired differences is in the note. The goal (Redis): its p50 at most 3 ms over the
  in-process one. Ray's added p50 is reported (the issue sets it no target);
* **throughput**: closed loop at 16 and 64 clients (``--quick``: 4) against the in-process
  batcher and that first backend configuration (torch's default threads, one per core),
  then one worker / replica of one torch thread and two of one thread each
  (``OMP_NUM_THREADS=1`` / ``--replica-cpus 1``: two of two threads on two cores would fight
  over them; the one-thread single one makes 1 vs 2 a like-for-like pair). On 2 cores the
  2-worker figure is expected to be flat: docs/deploy.md works the scale-out out on paper.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks import _serve_load as load
from benchmarks import _serve_peers as peers
from benchmarks import serve as base

REDIS = "ours over Redis"
RAY = "ours over Ray Serve"
#: the added p50 (one client) the Redis path may cost over the in-process batcher
REDIS_ADDED_P50_S = 0.003
#: how long `danlu serve --ray` may take to start its Ray instance and replicas (a bound)
RAY_READY_S = 600.0


def _each(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def redis_name(workers: int, threads: int | None = None) -> str:
    each = "" if threads is None else f", {_each(threads, 'torch thread')} each"
    return f"{REDIS} ({_each(workers, 'worker')}{each})"


def ray_name(replicas: int, cpus: int | None = None) -> str:
    each = "" if cpus is None else f", {_each(cpus, 'CPU')} each"
    return f"{RAY} ({_each(replicas, 'replica')}{each})"


@contextlib.contextmanager
def redis_fleet(ckpt: Path, workers: int, threads: int | None = None) -> Iterator[str]:
    """A ``redis-server`` on a free loopback port, ``danlu serve CKPT --redis`` and
    ``workers`` x ``danlu worker CKPT`` (``threads``: their ``OMP_NUM_THREADS``); yields the
    web side's base URL once ``/readyz`` counts every worker."""
    import httpx

    from danlu.serve.launch import ServerProcess, WorkerProcess

    proc, port = peers.start_redis()
    url = f"redis://127.0.0.1:{port}/0"
    env = {"OMP_NUM_THREADS": str(threads)} if threads else None
    worker_args = ["--max-batch", str(base.MAX_BATCH), "--max-wait-ms", str(base.MAX_WAIT_MS),
                   "--device", "cpu"]
    try:
        with ServerProcess(ckpt, ["--redis", url, "--score-threshold", str(base.SCORE),
                                  "--drain-s", "5"]) as web, contextlib.ExitStack() as stack:
            for i in range(workers):
                stack.enter_context(WorkerProcess(ckpt, url, [*worker_args, "--name",
                                                              f"bench-{i}"], env=env))
            for _ in range(600):  # a bound: the heartbeats arrive within a second
                r = httpx.get(web.url + "/readyz", timeout=10, trust_env=False)
                if r.status_code == 200 and len(r.json()["workers"]) == workers:
                    break
                time.sleep(0.05)
            yield web.url.rstrip("/")
    finally:
        peers.stop(proc)


@contextlib.contextmanager
def ray_front(ckpt: Path, replicas: int, cpus: float) -> Iterator[str]:
    """``danlu serve CKPT --ray --replicas N --replica-cpus C`` (its own local Ray); yields
    its base URL once the replicas answer."""
    if importlib.util.find_spec("ray") is None:
        raise peers.PeerUnavailable("Ray Serve is not installed (pip install 'danlu[ray]')")
    from danlu.serve.launch import ServerProcess

    args = [*base.ours_args(), "--ray", "--replicas", str(replicas), "--replica-cpus",
            f"{cpus:g}"]
    with ServerProcess(str(ckpt), args, ready_timeout_s=RAY_READY_S) as srv:
        yield srv.url.rstrip("/")


Front = Callable[[Path], contextlib.AbstractContextManager[str]]


@dataclass(frozen=True)
class Backend:
    """One scale-out backend as the benchmark runs it (module doc)."""

    label: str  # "Redis path", "Ray path"
    first: str  # the configuration paired with the in-process batcher
    front: Front
    one: str  # one worker / replica of one thread
    one_front: Front
    two: str  # two of one thread each
    two_front: Front
    added_p50_goal: float | None  # None: reported, no target


def backends() -> dict[str, Backend]:
    """The two backends (module doc)."""
    cpus = os.cpu_count() or 1
    return {
        "redis": Backend("Redis path", redis_name(1), lambda ck: redis_fleet(ck, 1),
                         redis_name(1, 1), lambda ck: redis_fleet(ck, 1, threads=1),
                         redis_name(2, 1), lambda ck: redis_fleet(ck, 2, threads=1),
                         REDIS_ADDED_P50_S),
        "ray": Backend("Ray path", ray_name(1, cpus), lambda ck: ray_front(ck, 1, cpus),
                       ray_name(1, 1), lambda ck: ray_front(ck, 1, 1),
                       ray_name(2, 1), lambda ck: ray_front(ck, 2, 1), None),
    }


def backend_rows(b: Backend, ckpt: Path, bodies: list[bytes], quick: bool
                 ) -> list[base.LoadRow]:
    """The paired one-client latency, then the throughput rows (module doc)."""
    s = base.settings(quick)
    busy = tuple(c for c in s["concurrencies"] if c > 1)
    case = f"closed loop, max batch {base.MAX_BATCH}, wait {base.MAX_WAIT_MS} ms"
    paired = "one client, paired with the other server"

    def first() -> list[base.LoadRow]:
        base._say(f"ours and {b.first}: starting")
        with peers.ours_server(ckpt, base.ours_args()) as local, b.front(ckpt) as remote:
            a, r = local + "/v1/detect", remote + "/v1/detect"
            base.warm(a, bodies, quick)
            base.warm(r, bodies, quick)
            base._say("one client, paired")
            res = load.paired_latency([a, r], bodies, 30 if quick else 400)
            diffs = [y.latency - x.latency for x, y in
                     zip(*(x.samples for x in res), strict=True)] if res[0].samples else []
            note = (f"paired differences ({b.label} - in-process): median "
                    f"{base._fmt(np.median(diffs))}" if diffs else "")
            out = [base._row(paired, base.OURS, res[0]), base._row(paired, b.first, res[1], note)]
            out += base.closed_rows(case, base.OURS, a, bodies, quick, busy)
            out += base.closed_rows(case, b.first, r, bodies, quick, busy)
            return out

    def alone(name: str, front: Front) -> Callable[[], list[base.LoadRow]]:
        def body() -> list[base.LoadRow]:
            base._say(f"{name}: starting")
            with front(ckpt) as remote:
                return base.closed_rows(case, name, remote + "/v1/detect", bodies, quick, busy)
        return body

    return (base._guarded(paired, b.first, first)
            + base._guarded(case, b.one, alone(b.one, b.one_front))
            + base._guarded(case, b.two, alone(b.two, b.two_front)))


def goal_rows(b: Backend, rows: list[base.LoadRow]) -> list[base.GoalRow]:
    """The backend's one-client goal (or its reported figure), with the throughput ratios in
    its note."""
    one = {r.server: r for r in rows if r.concurrency == "1" and r.ok and not r.skipped}
    if b.added_p50_goal is None:
        g, target = f"{b.label}, one client: added p50 over in-process", "none set (reported)"
    else:
        g = f"{b.label}, one client: p50 <= in-process p50 + {b.added_p50_goal * 1e3:g} ms"
        target = f"<= +{base._fmt(b.added_p50_goal)}"
    mine, local = one.get(b.first), one.get(base.OURS)
    busy = [r for r in rows if r.concurrency not in ("1", "-") and r.ok and not r.skipped]
    ratios = []
    for c in sorted({r.concurrency for r in busy}, key=int):
        at = {r.server: r.rps for r in busy if r.concurrency == c}
        if base.OURS in at:
            ratios += [f"{n} at {c} clients: {at[n] / at[base.OURS]:.2f}x in-process"
                       for n in (b.first, b.one, b.two) if n in at]
        if b.one in at and b.two in at:
            ratios.append(f"2 / 1 (1 thread each) at {c} clients: {at[b.two] / at[b.one]:.2f}x")
    if mine is None or local is None:
        why = next((r.skipped for r in rows if r.skipped), "did not run")
        unavailable = "" if why.startswith("FAILED") or why == "did not run" else why
        return [base.GoalRow(g, "-", target, False, why, skipped=unavailable)]
    added = mine.p50 - local.p50
    met = None if b.added_p50_goal is None else bool(added <= b.added_p50_goal)
    return [base.GoalRow(g, f"{base._fmt(mine.p50)} vs {base._fmt(local.p50)}: "
                            f"{'+' if added >= 0 else '-'}{base._fmt(abs(added))}",
                         target, met, "; ".join(ratios))]


def run_backend(kind: str, quick: bool = False) -> list:
    """The rows of one backend (``"redis"`` or ``"ray"``): the load table (LoadRow) then its
    goal (GoalRow)."""
    from benchmarks import _predict_scene as scene_mod

    b = backends()[kind]
    base._T0[0] = time.perf_counter()
    ckpt = scene_mod.model_checkpoint(quick)
    bodies = [load.multipart_body(j) for j in load.jpeg_images(base.settings(quick)["images"])]
    rows = backend_rows(b, ckpt, bodies, quick)
    base._say(f"done in {time.perf_counter() - base._T0[0]:.0f} s")
    return rows + goal_rows(b, rows)
