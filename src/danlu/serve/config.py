"""The settings of one ``danlu serve`` process, carried to uvicorn workers as JSON."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

from danlu.errors import ConfigError

#: the environment variable that hands the settings to each uvicorn worker process
ENV_CONFIG = "DANLU_SERVE_CONFIG"
#: where ``--token`` is read from when the option is not given (keeps it out of ``ps``)
ENV_TOKEN = "DANLU_SERVE_TOKEN"

#: formats PIL reports (``Image.format``) that uploads may use
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO")
#: PIL's own decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``), our default cap
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass
class ServeConfig:
    """Everything ``danlu serve`` was told (the CLI options one to one).

    Args:
        model: a checkpoint, run folder, ``.onnx`` / ``.torchscript`` export or ``haar:NAME``.
        max_batch: the most images one model call takes.
        max_wait_ms: the longest a request waits for others to fill its batch.
        max_queue: admitted requests (decoding, queued or running) above which new ones get 503.
        timeout_s: a request's deadline from arrival; past it the answer is 504.
        drain_s: after SIGTERM, how long requests in flight may take before the process exits.
        max_upload_bytes: the largest request body accepted (413 above).
        max_pixels: the most pixels (width * height, from the header) an image may have (413).
        token: a bearer token every route but ``/healthz`` and the page needs; None: open.
        decode_threads: threads decoding and letterboxing uploads (0: one per CPU, at most 8).
        model_nice: how much lower the model thread's CPU priority is than the rest of the
            process (Linux nice levels): reading, decoding and refusing requests then never
            wait behind the model for a core (lower 503 latency under overload), at some cost
            in throughput where the model shares its cores with them. 0: the same priority.
        redis_url: run no model here: send the work to ``danlu worker`` processes over this
            Redis (``redis://host:6379/0``); None: the model runs in this process.
        redis_prefix: the prefix of every Redis key (one prefix per model and fleet).
        ray / ray_address / replicas / autoscale / replica_cpus / replica_gpus: run no model
            here: serve it from Ray Serve replicas (:mod:`danlu.serve.ray_backend`) on a local
            Ray or the cluster at ``ray_address``; ``replicas`` of them (with ``autoscale``:
            from 1 up to ``replicas`` on ongoing requests), each with these CPUs and GPUs.
        ray_app: with ``ray``, attach to this Serve application, deployed by someone else (a
            KubeRay RayService), instead of deploying one; None: deploy ``danlu`` and delete
            it on exit.
        max_backlog: with ``redis_url``, jobs not yet done (the stream's length) at or above
            which new requests get 503 + Retry-After.
    """

    model: str
    device: str = "auto"
    score_threshold: float = 0.25
    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 64
    timeout_s: float = 30.0
    drain_s: float = 30.0
    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = DEFAULT_MAX_PIXELS
    formats: tuple[str, ...] = DEFAULT_FORMATS
    token: str | None = None
    cors_origins: tuple[str, ...] = ()
    decode_threads: int = 0
    model_nice: int = 0
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    warmup: bool = True
    predictor_options: dict = field(default_factory=dict)
    redis_url: str | None = None
    redis_prefix: str = "danlu"
    max_backlog: int = 256
    ray: bool = False
    ray_address: str | None = None
    replicas: int = 1
    autoscale: bool = False
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    ray_app: str | None = None

    @property
    def ray_deploy(self) -> bool:
        """Whether ``--ray`` deploys the replicas itself (not when attaching to ``ray_app``)."""
        return self.ray_app is None

    def __post_init__(self) -> None:
        self.formats = tuple(f.upper() for f in self.formats)
        self.cors_origins = tuple(self.cors_origins)
        checks = {"--max-batch": self.max_batch >= 1, "--max-wait-ms": self.max_wait_ms >= 0,
                  "--max-queue": self.max_queue >= 1, "--timeout-s": self.timeout_s > 0,
                  "--drain-s": self.drain_s >= 0, "--max-upload-mb": self.max_upload_bytes > 0,
                  "--max-pixels": self.max_pixels > 0, "--workers": self.workers >= 1,
                  "--score-threshold": 0.0 <= self.score_threshold <= 1.0,
                  "--port": 0 <= self.port <= 65535, "--max-backlog": self.max_backlog >= 1,
                  "--redis-prefix": bool(self.redis_prefix), "--replicas": self.replicas >= 1,
                  "--replica-cpus": self.replica_cpus >= 0,
                  "--replica-gpus": self.replica_gpus >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name}: out of range",
                                  hint=f"see `danlu serve --help` for {name}")

    @property
    def threads(self) -> int:
        """The decode pool's size."""
        return self.decode_threads or max(1, min(8, os.cpu_count() or 1))

    def to_env(self) -> str:
        """JSON for :data:`ENV_CONFIG` (the token included: the environment of the worker
        processes is theirs alone)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> ServeConfig:
        """The settings the parent process put in :data:`ENV_CONFIG`."""
        text = os.environ.get(ENV_CONFIG)
        if not text:
            raise ConfigError(f"{ENV_CONFIG} is not set",
                              hint="start the service with `danlu serve MODEL`")
        doc = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v)
                      for k, v in doc.items() if k in known})


__all__ = ["ServeConfig", "ENV_CONFIG", "ENV_TOKEN", "DEFAULT_FORMATS", "DEFAULT_MAX_PIXELS"]
