"""``danlu serve``: the detector as an HTTP service (FastAPI + uvicorn, dynamic batching)."""

from __future__ import annotations

import os

import typer

from danlu.cli._common import info, missing_modules

#: the modules the serve extra brings, and the pip name of each
_NEEDS = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart",
          "prometheus_client": "prometheus-client"}


def require_serve_extra() -> None:
    """One clear error naming the extra when a serving dependency is missing."""
    from danlu.errors import ConfigError

    missing = missing_modules(_NEEDS)
    if missing:
        raise ConfigError(f"danlu serve needs {', '.join(_NEEDS[m] for m in missing)}, which "
                          "is not installed", hint="; ".join(sorted(set(missing.values()))))


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
    ) -> None:
        """Serve a detector over HTTP: POST /v1/detect, a web page at /, metrics at /metrics.

        Requests are batched dynamically (by --max-batch and --max-wait-ms); uploads are
        checked (size, format, pixels) before decoding; SIGTERM drains.

        Example (then open http://127.0.0.1:8000/, or
        curl -F image=@shapes/JPEGImages/shapes_000000.png http://127.0.0.1:8000/v1/detect):
          danlu serve runs/shapes/best.pt --port 8000
        """
        require_serve_extra()
        from danlu.serve.config import ENV_TOKEN, ServeConfig
        from danlu.serve.engine import Engine
        from danlu.serve.server import run

        config = ServeConfig(
            model, device=device, score_threshold=score_threshold, max_batch=max_batch,
            max_wait_ms=max_wait_ms, max_queue=max_queue, timeout_s=timeout_s, drain_s=drain_s,
            max_upload_bytes=int(max_upload_mb * 2**20), max_pixels=max_pixels,
            token=token or os.environ.get(ENV_TOKEN) or None,
            cors_origins=tuple(cors_origin or ()), host=host, port=port, workers=workers,
            model_nice=model_nice)
        info(f"loading {model} ...")
        engine = Engine.open(config)  # once here: a bad MODEL is one error before any server
        if host not in ("127.0.0.1", "localhost", "::1") and not config.token:
            info("warning: listening beyond this machine with no --token: anyone who reaches "
                 "the port can use the model")
        if workers > 1:
            del engine  # each worker loads its own; this one only proved the model loads
            engine = None
        raise typer.Exit(run(config, engine, log_level=log_level))
