"""``danlu serve``: the detector as an HTTP service (FastAPI + uvicorn, dynamic batching), with
the model in the process or, with ``--redis``, in ``danlu worker`` processes."""

from __future__ import annotations

import os

import typer

from danlu.cli._common import info, require_modules

#: the modules the serve extra brings
SERVE_MODULES = ("fastapi", "uvicorn", "multipart", "prometheus_client")


def require_serve_extra() -> None:
    """One clear error naming the extra when a serving dependency is missing."""
    require_modules("danlu serve", SERVE_MODULES)


def check_redis(url: str, prefix: str) -> None:
    """Say on stderr whether Redis answers now (the server starts either way and answers 503
    ``backend_unavailable`` until it does)."""
    from danlu.serve.redis_queue import redact

    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        client.close()
        info(f"Redis at {redact(url)} answers (keys under {prefix}:)")
    except Exception as e:  # noqa: BLE001 - any failure: the same warning
        info(f"warning: Redis at {redact(url)} does not answer now ({e}); requests get 503 "
             "until it does")


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model: str = typer.Argument(..., help="A checkpoint (best.pt), run folder, .onnx / "
                                    ".torchscript export, or haar:NAME."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on "
                                 "(0.0.0.0: every interface; then set --token)."),
        port: int = typer.Option(8000, "--port", help="TCP port (0: a free one)."),
        max_batch: int = typer.Option(16, "--max-batch", help="Most images per model call."),
        max_wait_ms: float = typer.Option(5.0, "--max-wait-ms",
                                          help="Longest a request waits for its batch to fill."),
        workers: int = typer.Option(1, "--workers", help="Server processes, each with its own "
                                    "model, sharing the port."),
        token: str = typer.Option(None, "--token", help="Bearer token every route but /healthz "
                                  "and the page needs (default: $DANLU_SERVE_TOKEN; none: open)."),
        max_queue: int = typer.Option(64, "--max-queue", help="Admitted requests per worker "
                                      "above which new ones get 503 + Retry-After."),
        timeout_s: float = typer.Option(30.0, "--timeout-s", help="A request's deadline (504)."),
        drain_s: float = typer.Option(30.0, "--drain-s", help="After SIGTERM, how long requests "
                                      "in flight may take before exit."),
        max_upload_mb: float = typer.Option(32.0, "--max-upload-mb",
                                            help="Largest request body (413 above)."),
        max_pixels: int = typer.Option(89_478_485, "--max-pixels", help="Most pixels an image "
                                       "may have, read from its header (413 above)."),
        score_threshold: float = typer.Option(0.25, "--score-threshold",
                                              help="Default lowest score returned."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
        cors_origin: list[str] = typer.Option(None, "--cors-origin", help="Allow browser "
                                              "calls from this origin (repeat; off by default)."),
        model_nice: int = typer.Option(0, "--model-nice", help="Run the model at this much "
                                       "lower CPU priority (Linux nice, e.g. 10): faster "
                                       "refusals under overload, less throughput when the "
                                       "model shares its cores."),
        log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level."),
        redis_url: str = typer.Option(None, "--redis", help="Run no model here: send each "
                                      "image to `danlu worker` processes over this Redis "
                                      "(redis://host:6379/0)."),
        redis_prefix: str = typer.Option("danlu", "--redis-prefix", help="With --redis: the "
                                         "prefix of every key (one per model and fleet)."),
        max_backlog: int = typer.Option(256, "--max-backlog", help="With --redis: jobs not "
                                        "yet done above which new requests get 503."),
        ray: bool = typer.Option(False, "--ray", help="Run no model here: serve it from Ray "
                                 "Serve replicas (a local Ray, or --ray-address)."),
        ray_address: str = typer.Option(None, "--ray-address", help="With --ray: the Ray "
                                        "cluster (auto, HOST:6379); default: a local Ray."),
        replicas: int = typer.Option(1, "--replicas", help="With --ray: model replicas (with "
                                     "--autoscale: the most)."),
        autoscale: bool = typer.Option(False, "--autoscale", help="With --ray: scale from 1 "
                                       "to --replicas on ongoing requests."),
        replica_cpus: float = typer.Option(1.0, "--replica-cpus", help="With --ray: CPUs "
                                           "(and torch threads) per replica."),
        replica_gpus: float = typer.Option(0.0, "--replica-gpus", help="With --ray: GPUs per "
                                           "replica (with --device cuda)."),
        ray_attach: str = typer.Option(None, "--ray-attach", help="With --ray: deploy nothing; "
                                       "attach to this Serve application (a KubeRay "
                                       "RayService's, e.g. 'danlu') and leave it running."),
    ) -> None:
        """Serve a detector over HTTP: POST /v1/detect, a web page at /, metrics at /metrics.

        Requests are batched dynamically (by --max-batch and --max-wait-ms); uploads are
        checked (size, format, pixels) before decoding; SIGTERM drains. With --redis the
        model runs in `danlu worker` processes, on this machine or others; with --ray in Ray
        Serve replicas (docs/serve.md).

        Examples (then open http://127.0.0.1:8000/, or
        curl -F image=@shapes/JPEGImages/shapes_000000.png http://127.0.0.1:8000/v1/detect):
          danlu serve runs/shapes/best.pt --port 8000
          danlu serve runs/shapes/best.pt --redis redis://127.0.0.1:6379/0
        """
        require_serve_extra()
        from danlu.errors import ConfigError
        from danlu.serve.config import ENV_TOKEN, ServeConfig
        from danlu.serve.engine import Engine
        from danlu.serve.server import run

        config = ServeConfig(
            model, device=device, score_threshold=score_threshold, max_batch=max_batch,
            max_wait_ms=max_wait_ms, max_queue=max_queue, timeout_s=timeout_s, drain_s=drain_s,
            max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
            token=token or os.environ.get(ENV_TOKEN) or None,
            cors_origins=tuple(cors_origin or ()), host=host, port=port, workers=workers,
            model_nice=model_nice, redis_url=redis_url, redis_prefix=redis_prefix,
            max_backlog=max_backlog, ray=ray, ray_address=ray_address, replicas=replicas,
            autoscale=autoscale, replica_cpus=replica_cpus, replica_gpus=replica_gpus,
            ray_app=ray_attach)
        if ray and redis_url:
            raise ConfigError("--ray and --redis are two ways to run the model elsewhere: "
                              "choose one")
        if ray_attach and not ray:
            raise ConfigError("--ray-attach attaches to Ray Serve replicas: it needs --ray")
        if ray:  # the web side: no model, no torch here; the replicas load it
            require_modules("--ray", ["ray"])
            if workers > 1:
                raise ConfigError("--ray runs one web process (the replicas do the model work)",
                                  hint="drop --workers, raise --replicas")
            raise typer.Exit(run(config, None, log_level=log_level))
        if redis_url:  # the web side: no model, no torch here
            from danlu.serve.redis_queue import check_url

            require_modules("--redis", ["redis"])
            check_url(redis_url)
            check_redis(redis_url, redis_prefix)
            raise typer.Exit(run(config, None, log_level=log_level))
        info(f"loading {model} ...")
        engine = Engine.open(config)  # once here: a bad MODEL is one error before any server
        if host not in ("127.0.0.1", "localhost", "::1") and not config.token:
            info("warning: listening beyond this machine with no --token: anyone who reaches "
                 "the port can use the model")
        if workers > 1:
            del engine  # each worker loads its own; this one only proved the model loads
            engine = None
        raise typer.Exit(run(config, engine, log_level=log_level))
