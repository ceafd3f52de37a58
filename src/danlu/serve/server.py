"""Run the service under uvicorn: one process, or ``--workers N`` sharing one socket.

Draining: on SIGTERM (or the first Ctrl+C) readiness turns 503 at once and new detection
requests are refused with 503 ``draining``; requests already admitted finish, for at most
``drain_s``; then uvicorn closes the connections and the process exits 0. A second signal
stops at once. With several workers the parent forwards SIGTERM and each worker drains.

The process prints ``danlu serve: ready on http://HOST:PORT`` on stderr once every worker
has loaded and warmed its model and listens (what scripts wait for). Several workers are plain
processes started here (spawned, each with its own model), sharing the one listening socket;
the parent forwards SIGTERM / SIGINT to them, restarts one that dies, and exits 0 when they
have all drained.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn

from danlu.errors import ServeError
from danlu.serve.config import ENV_CONFIG, ServeConfig
from danlu.serve.engine import Engine
from danlu.serve.metrics import MULTIPROC_ENV, worker_exited

APP = "danlu.serve.app:app_from_env"


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM / SIGINT drains instead of stopping.

    Args:
        config: uvicorn's config.
        on_ready: called once the lifespan (model load, warm-up) is done and it listens.
    """

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] | None = None
                 ) -> None:
        super().__init__(config)
        self.on_ready = on_ready
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_ready is not None and not self.should_exit:
            self.on_ready()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self._loop is None:
            self.force_exit = self._draining
            self.should_exit = True
            return
        self._draining = True
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        app = self.config.loaded_app
        while hasattr(app, "app") and not hasattr(app, "state"):  # through the middlewares
            app = app.app
        service = getattr(getattr(app, "state", None), "service", None)
        if service is None:
            self.should_exit = True
            return
        service.begin_drain()

        async def drain() -> None:
            await service.wait_drained(service.config.drain_s)
            self.should_exit = True

        asyncio.get_running_loop().create_task(drain())


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port} ({e.strerror or e})",
                         hint="choose another --port, or stop what uses it") from e
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: Any, config: ServeConfig, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, factory=isinstance(app, str), log_level=log_level,
                          timeout_graceful_shutdown=max(1, int(config.drain_s) + 5),
                          access_log=False, lifespan="on")


def _say_ready(url: str, workers: int) -> None:
    plural = "s" if workers > 1 else ""
    print(f"danlu serve: ready on {url} ({workers} worker{plural}; the page at {url}/, the API "
          f"at {url}/docs)", file=sys.stderr, flush=True)


def run(config: ServeConfig, engine: Engine | None = None, *, log_level: str = "warning"
        ) -> int:
    """Serve until stopped; returns the exit status (0 after a drain).

    Args:
        config: the settings.
        engine: the model, already loaded (one worker only); None: each worker loads it.
        log_level: uvicorn's log level.
    """
    os.environ[ENV_CONFIG] = config.to_env()
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        if config.workers == 1:
            from danlu.serve.app import create_app

            uv = _uvicorn_config(create_app(config, engine), config, log_level)
            server = DrainingServer(uv, on_ready=lambda: _say_ready(url, 1))
            server.run(sockets=[sock])
            return 0 if server.started else 2
        with tempfile.TemporaryDirectory(prefix="danlu-metrics-") as metrics_dir:
            os.environ.setdefault(MULTIPROC_ENV, metrics_dir)
            return _supervise(config, sock, url, log_level)
    finally:
        sock.close()


def _worker(sock: socket.socket, log_level: str, ready: Any) -> None:
    """One worker process: its own model, the shared socket."""
    config = ServeConfig.from_env()

    def on_ready() -> None:
        with ready.get_lock():
            ready.value += 1

    DrainingServer(_uvicorn_config(APP, config, log_level), on_ready=on_ready).run([sock])


def _supervise(config: ServeConfig, sock: socket.socket, url: str, log_level: str) -> int:
    """Start ``config.workers`` worker processes; forward stop signals; restart the dead."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Value("i", 0)
    stopping = threading.Event()

    def start() -> Any:
        proc = ctx.Process(target=_worker, args=(sock, log_level, ready), name="danlu-worker")
        proc.start()
        return proc

    procs = [start() for _ in range(config.workers)]

    def forward(sig: int, frame: FrameType | None) -> None:
        stopping.set()
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, sig)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    announced, restarts = False, 0
    try:
        while not stopping.is_set():
            if not announced and ready.value >= config.workers:
                _say_ready(url, config.workers)
                announced = True
            for i, proc in enumerate(procs):
                if proc.exitcode is not None and not stopping.is_set():
                    worker_exited(proc.pid)
                    if not announced or restarts >= 10 * config.workers:
                        raise ServeError(f"a worker exited with status {proc.exitcode}"
                                         + ("" if announced else " while starting"),
                                         hint="run with --workers 1 --log-level info to see why")
                    restarts += 1
                    procs[i] = start()
            stopping.wait(0.1)
        deadline = time.monotonic() + config.drain_s + 15
        for proc in procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()
        return 0 if all(p.exitcode == 0 for p in procs) else 1
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for proc in procs:
            if proc.exitcode is None:
                proc.kill()


__all__ = ["run", "bind", "DrainingServer", "APP"]
