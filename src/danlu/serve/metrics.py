"""Prometheus metrics of the service (``GET /metrics``), right with several workers.

With one worker the metrics live in a private registry. With ``--workers N`` the parent process
sets ``PROMETHEUS_MULTIPROC_DIR`` to a fresh folder before the workers start; prometheus-client
then keeps every worker's values in files there, and ``/metrics`` (whichever worker answers)
sums them: counters and histograms add up, the queue gauges are summed over live workers.

Over Redis (``danlu serve --redis``) :func:`redis_metrics_text` adds the queue's own state,
read from Redis at scrape time: the backlog, the pending jobs, the live workers and the
counters the workers keep there (``danlu_redis_*``).
"""

from __future__ import annotations

import os
from typing import Any

#: the environment variable prometheus-client reads for multi-process mode
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)


class Metrics:
    """The service's counters, histograms and gauges (names in the docs, ``danlu_*``)."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        disable_created_metrics()  # the *_created series double the text for no use here
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        # in multi-process mode the values go to files whatever the registry; collection
        # reads the files (see render)
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("danlu_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=reg)
        self.request_seconds = Histogram("danlu_request_seconds", "request latency by route",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.stage_seconds = Histogram("danlu_stage_seconds",
                                       "time per request stage (queue, decode, infer, post)",
                                       ["stage"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.batch_size = Histogram("danlu_batch_size", "images per model call",
                                    buckets=_BATCH_BUCKETS, registry=reg)
        self.batches = Counter("danlu_batches", "model calls by dispatch reason", ["reason"],
                               registry=reg)
        self.rejected = Counter("danlu_rejected", "requests refused, by reason", ["reason"],
                                registry=reg)
        gauge: dict[str, Any] = {"multiprocess_mode": "livesum"} if self.multiprocess else {}
        self.queue_depth = Gauge("danlu_queue_depth", "requests waiting for a batch",
                                 registry=reg, **gauge)
        self.in_flight = Gauge("danlu_in_flight", "admitted requests not yet answered",
                               registry=reg, **gauge)
        self.model_busy = Gauge("danlu_model_busy", "1 while the model runs (summed over "
                                "workers: how many are busy)", registry=reg, **gauge)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


#: the counters workers HINCRBY in ``P:stats``, and what each counts
REDIS_COUNTERS = {
    "replies": "jobs answered (each once: the done marker)",
    "duplicates": "answers not written because the job was answered already",
    "reclaimed": "jobs taken over from a worker that stopped answering (XAUTOCLAIM)",
    "dead_lettered": "jobs moved to the dead-letter stream (the model raised, or too many "
                     "deliveries)",
    "expired": "jobs whose deadline had passed before a worker reached them",
    "batch_images": "images in the workers' model calls",
}


def redis_metrics_text(state: dict[str, Any] | None) -> bytes:
    """Prometheus text of the Redis queue (``state`` from the web side's dispatcher: backlog,
    pending, workers, stats; None when Redis cannot be read: only ``danlu_redis_up 0``)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    families: list[Any] = [GaugeMetricFamily("danlu_redis_up", "1 while Redis answers",
                                             value=0 if state is None else 1)]
    if state is not None:
        stats = state.get("stats", {})
        for name, value, text in (
                ("backlog", state["backlog"], "jobs not yet done (XLEN of the job stream)"),
                ("pending", state.get("pending", 0), "jobs a worker holds, not yet answered"),
                ("workers", len(state["workers"]), "workers alive (fresh heartbeat)")):
            families.append(GaugeMetricFamily(f"danlu_redis_{name}", text, value=value))
        for name, text in REDIS_COUNTERS.items():
            families.append(CounterMetricFamily(f"danlu_redis_{name}", text,
                                                value=stats.get(name, 0)))
        batches = CounterMetricFamily("danlu_redis_batches", "the workers' model calls by "
                                      "dispatch reason", labels=["reason"])
        for key, value in sorted(stats.items()):
            if key.startswith("batches:"):
                batches.add_metric([key.partition(":")[2]], value)
        families.append(batches)

    class _Snapshot:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry)


def worker_exited(pid: int) -> None:
    """Forget a dead worker's live gauges (multi-process mode)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


__all__ = ["Metrics", "MULTIPROC_ENV", "worker_exited", "redis_metrics_text", "REDIS_COUNTERS"]
