"""The web side of ``danlu serve MODEL --ray``: no model here, the work goes to the replicas of
a Ray Serve deployment (:mod:`danlu.serve.ray_replica`) through a deployment handle.

A request is admitted, read and checked here as on every path (the bounded queue, the upload
limits, the header's format and pixel count: :class:`~danlu.serve.dispatch.RemoteFront`), then
:meth:`RayDispatcher.submit` sends the upload **as it came** (JPEG / PNG bytes, 10-50x smaller
than its pixels) with its validated options to a replica, which decodes, batches
(``@serve.batch``) and runs the same Engine. Its answer comes back as the outcome; a problem it
found (a truncated image) is raised again here as the same
:class:`~danlu.serve.problems.RequestProblem`, so the JSON error is the local one.

* **A replica that dies** under a request (killed, its node lost) is not an error for the
  request: it is sent again, at most :attr:`RayOptions.retries` times (a detection is
  idempotent), and Ray starts a new replica. All tries lost, or the deployment down: 503
  ``backend_unavailable``.
* **A request that goes away** (its client disconnected, its deadline passed) is cancelled on
  the replica too (``DeploymentResponse.cancel``): one still queued there never runs.
* **Batches** are counted once each in ``danlu_batch_size`` / ``danlu_batches_total`` (the
  replica numbers them); ``/metrics`` adds ``danlu_ray_replicas`` and
  ``danlu_ray_resent_total``.

Ray is imported only inside methods: ``import danlu`` and ``danlu --help`` stay cheap.

Example:
    >>> d = RayDispatcher(ServeConfig("best.pt"), Metrics(), RayOptions(replicas=2))
    >>> await d.start()                                  # doctest: +SKIP
    >>> outcome, info = await d.submit(d.front.prepare(jpeg, d.front.options()))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import OrderedDict
from typing import Any

from danlu.errors import ServeError
from danlu.serve.batcher import BatchInfo
from danlu.serve.config import ServeConfig
from danlu.serve.dispatch import Encoded, ModelFailure, RemoteFront, model_error, nothing_expected
from danlu.serve.engine import DetectOptions, Outcome, Prepared
from danlu.serve.metrics import Metrics
from danlu.serve.problems import RequestProblem
from danlu.serve.ray_replica import (  # build_app: a RayService's import_path may name it here
    APP_NAME,
    DEPLOYMENT,
    ProblemDoc,
    RayOptions,
    RemoteOutcome,
    bind,
    build_app,
)

#: why a request's replica went away: send it again (the names of Ray's exception classes)
_LOST = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "ReplicaUnavailableError",
         "WorkerCrashedError", "NodeDiedError")


def backend_unavailable(why: str, stage: str = "infer") -> RequestProblem:
    """The 503 of a request no replica could answer."""
    return RequestProblem(503, "backend_unavailable", f"no model replica could answer "
                          f"({why}); retry later", stage=stage, headers={"Retry-After": "1"})


class RayDispatcher:
    """Uploads to Ray Serve replicas (the module doc); a :class:`~danlu.serve.dispatch.
    Dispatcher`.

    Args:
        config: the web side's settings (the batch limits and the model go to the replicas).
        metrics: the service's metrics (batches counted there).
        options: where and how the replicas run (None: from ``config``,
            :meth:`RayOptions.from_config`).
    """

    kind = "ray"

    def __init__(self, config: ServeConfig, metrics: Metrics,
                 options: RayOptions | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.options = options or RayOptions.from_config(config)
        self.front = RemoteFront(config)
        self.handle: Any = None
        self.resent = 0  # requests sent again after their replica died under them
        self._owns_ray = self._local = False
        self._seen: OrderedDict[str, None] = OrderedDict()  # recent batch ids
        self._batch_s: float | None = None  # a moving average of a batch's model time

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect to Ray (or start a local instance), deploy the replicas (or attach to
        them) and wait until they answer: seconds to minutes, off the event loop. Off the
        main thread too, on purpose: there ``ray.init`` would take SIGTERM over (to exit at
        once) from danlu's draining."""
        await asyncio.to_thread(self._connect)

    def _connect(self) -> None:
        # Ray's C++ crash handler (absl's) would take SIGTERM from danlu's draining too: it
        # prints a stack, and the process aborts once drained. Off here (read at `import ray`)
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        import ray
        from ray import serve

        o = self.options
        self._owns_ray = not ray.is_initialized()
        self._local = self._owns_ray and not o.address  # our own instance: ours to stop
        if self._owns_ray:  # a cluster's address, or a new local instance ("local": even
            # where `ray start` left one running)
            ray.init(**({"address": o.address} if o.address else
                        {"address": "local", "num_cpus": o.local_cpus,
                         "include_dashboard": False}), log_to_driver=False)
        try:
            if o.deploy:
                serve.start(proxy_location="Disabled")  # the ingress is danlu's own app
                self.handle = serve.run(bind(self.config, o), name=o.app_name,
                                        route_prefix=None)
            else:
                self.handle = serve.get_deployment_handle(DEPLOYMENT, o.app_name)
            self.front.update(self.handle.describe.remote().result())
        except Exception as e:
            if self._owns_ray:
                ray.shutdown()
            if not o.deploy:
                raise ServeError(f"cannot attach to the Ray Serve application {o.app_name!r} "
                                 f"({e})", hint="is it deployed and running? `serve status` on "
                                 "the cluster lists its applications") from e
            raise ServeError(f"the Ray Serve deployment did not start ({e})",
                             hint="check the model path on the replicas, and Ray's logs "
                                  "(/tmp/ray/session_latest/logs)") from e

    async def stop(self) -> None:
        """Delete the application if this process deployed it; stop the local Ray instance
        if it started one (from a cluster it only disconnects)."""
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        import ray
        from ray import serve

        if self.options.deploy and ray.is_initialized():
            serve.delete(self.options.app_name)
        if self._local:  # Serve on a cluster is the cluster's (other applications run there)
            serve.shutdown()
        if self._owns_ray:
            ray.shutdown()  # on a cluster: disconnect only

    # -- hints and admission ---------------------------------------------------------------------
    async def admit(self) -> None:
        """Nothing beyond the service's own bounded queue (Ray queues within it)."""

    def expect(self, n: int = 1) -> None:
        """Batching happens on the replicas: nothing to expect here."""

    def arrived(self, n: int = 1) -> None:
        """See :meth:`expect`."""

    def incoming(self) -> contextlib.AbstractContextManager[None]:
        return nothing_expected()

    def retry_after(self) -> float:
        """About how long the queue takes to empty: batches ahead times a batch's time."""
        per_batch = self._batch_s or 0.05
        return per_batch * self.config.max_queue / self.config.max_batch

    # -- work ------------------------------------------------------------------------------------
    async def submit(self, item: Prepared) -> tuple[Outcome, BatchInfo]:
        """Send ``item`` (an :class:`Encoded`) to a replica and wait for its answer. The
        returned ``queue_s`` is all of the round trip that is not the replica's decode and
        model time: the transport both ways and the wait for a batch."""
        assert isinstance(item, Encoded)
        t0 = time.perf_counter()
        answer = await self.call(item.data, item.options)
        round_trip = time.perf_counter() - t0
        item.width, item.height = answer.width, answer.height  # upright, as decoded
        item.decode_s += answer.decode_s
        remote = answer.batch or BatchInfo(1, "timeout", 0.0)
        self._count_batch(answer, remote)
        busy = answer.decode_s + answer.infer_s + answer.post_s
        return answer, BatchInfo(remote.size, remote.reason, max(0.0, round_trip - busy))

    async def call(self, data: bytes, options: DetectOptions) -> RemoteOutcome:
        """One replica call, sent again when its replica dies (at most ``retries`` times);
        the replica's problem or model failure raised as its :class:`RequestProblem`."""
        for attempt in range(self.options.retries + 1):
            response = self.handle.detect.remote(data, options)
            try:
                answer = await response
                break
            except asyncio.CancelledError:
                response.cancel()  # the request leaves the replica's queue too
                raise
            except Exception as e:
                if type(e).__name__ == "DeploymentUnavailableError":
                    raise backend_unavailable("the deployment is down") from e
                if not lost(e):
                    raise
                if attempt == self.options.retries:
                    raise backend_unavailable(f"{attempt + 1} replicas lost under it") from e
                self.resent += 1
        if isinstance(answer, ProblemDoc):
            raise answer.problem()
        if isinstance(answer, ModelFailure):
            raise model_error(answer)
        return answer

    def _count_batch(self, answer: RemoteOutcome, info: BatchInfo) -> None:
        """The batch's metrics, the first time one of its requests comes back."""
        if info.reason == "sliced" or answer.batch_id in self._seen:
            return
        self._seen[answer.batch_id] = None
        while len(self._seen) > 4096:
            self._seen.popitem(last=False)
        self._batch_s = answer.batch_s if self._batch_s is None \
            else 0.8 * self._batch_s + 0.2 * answer.batch_s
        self.metrics.batch_size.observe(info.size)
        self.metrics.batches.labels(info.reason).inc()

    # -- the replicas ----------------------------------------------------------------------------
    def alive(self) -> int:
        """Replicas running, as the Serve controller last saw them (a blocking call of a few
        ms; a replica that just died counts until the controller notices)."""
        from ray import serve

        app = serve.status().applications.get(self.options.app_name)
        deployment = app.deployments.get(DEPLOYMENT) if app is not None else None
        return 0 if deployment is None else int(deployment.replica_states.get("RUNNING", 0))

    def replica_names(self) -> list[str]:
        """The Ray actor names of the replicas now (namespace ``serve``), starting ones
        included: a dead replica's name goes at once, its replacement's comes before its
        model has loaded."""
        import ray

        prefix = f"SERVE_REPLICA::{self.options.app_name}#{DEPLOYMENT}#"
        return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                      if a.get("namespace") == "serve" and a["name"].startswith(prefix))

    # -- what the routes report ------------------------------------------------------------------
    async def readiness(self) -> tuple[dict[str, Any], bool]:
        """Ready while at least one replica runs."""
        try:
            alive = await asyncio.to_thread(self.alive)
        except Exception as e:  # noqa: BLE001 - Ray cannot be asked: not ready
            return {"status": "backend_unavailable", "message": str(e)}, False
        return ({"status": "ready" if alive else "no_replicas", "backend": "ray",
                 "replicas": alive}, alive > 0)

    async def describe(self) -> dict[str, Any] | None:
        """A replica's ``Engine.describe()`` (fetched at start), with ``dispatch: ray``."""
        if self.front.description is None:
            return None
        return {**self.front.description, "dispatch": "ray"}

    async def metrics_text(self) -> bytes:
        """``danlu_ray_replicas`` (running), ``danlu_ray_resent_total`` (requests sent again)."""
        try:
            alive: int | None = await asyncio.to_thread(self.alive)
        except Exception:  # noqa: BLE001 - the scrape still answers
            alive = None
        lines = ["# HELP danlu_ray_replicas Ray Serve replicas running (-1: Ray unreachable)",
                 "# TYPE danlu_ray_replicas gauge",
                 f"danlu_ray_replicas {-1 if alive is None else alive}",
                 "# HELP danlu_ray_resent_total requests sent again after their replica died",
                 "# TYPE danlu_ray_resent_total counter",
                 f"danlu_ray_resent_total {self.resent}"]
        return ("\n".join(lines) + "\n").encode()


def lost(error: BaseException) -> bool:
    """Whether ``error`` says the replica went away (Ray's classes by name: its task errors
    also subclass their cause's class, so every class of the error counts)."""
    return any(c.__name__ in _LOST for c in type(error).__mro__)


__all__ = ["RayDispatcher", "RayOptions", "backend_unavailable", "build_app", "lost",
           "APP_NAME"]
