"""``danlu worker``: the model side of ``danlu serve --redis``, on any machine that reaches the
Redis (:mod:`danlu.serve.worker`)."""

from __future__ import annotations

import os

import typer

from danlu.cli._common import info, require_modules


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        model: str = typer.Argument(..., help="The model the web side serves: a checkpoint "
                                    "(best.pt), run folder, .onnx / .torchscript export, or "
                                    "haar:NAME."),
        redis_url: str = typer.Option(..., "--redis", help="The Redis of `danlu serve "
                                      "--redis` (redis://host:6379/0)."),
        redis_prefix: str = typer.Option("danlu", "--redis-prefix",
                                         help="The key prefix the web side uses."),
        max_batch: int = typer.Option(16, "--max-batch", help="Most images per model call "
                                      "(and jobs read at once)."),
        max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="Longest a batch waits "
                                          "to fill once the model is free."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
        name: str = typer.Option(None, "--name", help="This worker's name in the consumer "
                                 "group and on /readyz (default: host-pid)."),
        reclaim_after_s: float = typer.Option(10.0, "--reclaim-after-s", help="Take over the "
                                              "jobs of a worker silent this long."),
        max_deliveries: int = typer.Option(3, "--max-deliveries", help="A job delivered more "
                                           "often than this (its workers kept dying) is "
                                           "dead-lettered and answered 500."),
        max_pixels: int = typer.Option(89_478_485, "--max-pixels", help="Most pixels an image "
                                       "may have (keep it as the web side's)."),
        drain_s: float = typer.Option(30.0, "--drain-s", help="After SIGTERM, how long the "
                                      "jobs in hand may take before exit."),
        model_nice: int = typer.Option(0, "--model-nice", help="Run the model at this much "
                                       "lower CPU priority (Linux nice)."),
    ) -> None:
        """Run the model for `danlu serve --redis`: read jobs from the Redis stream, batch
        them, answer each once; dead workers' jobs are taken over, poison images
        dead-lettered. SIGTERM finishes the jobs in hand, then exits 0.

        Example (beside the web side, on this machine or another):
          danlu worker runs/shapes/best.pt --redis redis://127.0.0.1:6379/0
        """
        require_modules("danlu worker", ["redis", "prometheus_client"])
        from danlu.errors import ConfigError
        from danlu.serve.config import ServeConfig
        from danlu.serve.engine import Engine
        from danlu.serve.redis_queue import check_url
        from danlu.serve.worker import FAULTS_ENV, WorkerConfig, parse_faults, run_worker

        check_url(redis_url)
        if reclaim_after_s <= 0 or max_deliveries < 1:
            raise ConfigError("--reclaim-after-s must be > 0 and --max-deliveries >= 1")
        serve = ServeConfig(model, device=device, max_batch=max_batch, max_wait_ms=max_wait_ms,
                            max_pixels=max_pixels, drain_s=drain_s, model_nice=model_nice)
        config = WorkerConfig(serve, redis_url, redis_prefix, name, reclaim_after_s,
                              max_deliveries, parse_faults(os.environ.get(FAULTS_ENV)))
        info(f"loading {model} ...")
        engine = Engine.open(serve)  # here: a bad MODEL is one error, exit 2
        raise typer.Exit(run_worker(config, engine))
