"""Run the service under uvicorn: one process, or ``--workers N`` sharing one socket.

Draining: on SIGTERM (or the first Ctrl+C) readiness turns 503 at once and new detection
requests are refused with 503 ``draining``; requests already admitted finish, for at most
``drain_s``; then uvicorn closes the connections and the process exits 0. A second signal
stops at once. With several workers the parent forwards SIGTERM and each worker drains.

The parent process prints ``danlu serve: ready on http://HOST:PORT`` on stderr once
``/readyz`` answers 200 (the model is loaded and warmed), which is what scripts wait for.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from types import FrameType
from typing import Any

import uvicorn

from danlu.errors import ServeError
from danlu.serve.config import ENV_CONFIG, ServeConfig
from danlu.serve.engine import Engine
from danlu.serve.metrics import MULTIPROC_ENV

APP = "danlu.serve.app:app_from_env"


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first SIGTERM / SIGINT drains instead of stopping."""

    _loop: asyncio.AbstractEventLoop | None = None
    _draining = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

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


def _announce(url: str, token: str | None, workers: int, stop: threading.Event) -> None:
    """Print the ready line once ``/readyz`` answers 200 (polled from a thread)."""
    request = urllib.request.Request(url + "/readyz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    while not stop.is_set():
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                if r.status == 200:
                    plural = "s" if workers > 1 else ""
                    print(f"danlu serve: ready on {url} ({workers} worker{plural}; the page at "
                          f"{url}/, the API at {url}/docs)", file=sys.stderr, flush=True)
                    return
        except (urllib.error.URLError, OSError, ValueError):
            pass
        stop.wait(0.05)


def load_engine(config: ServeConfig) -> Engine:
    """Build the model once in the calling process, so a bad MODEL is one clear error before
    any server starts."""
    return Engine(config)


def run(config: ServeConfig, engine: Engine | None = None, *, log_level: str = "warning"
        ) -> int:
    """Serve until stopped; returns the exit status (0 after a drain).

    Args:
        config: the settings.
        engine: the model, already loaded (one worker only); None: each worker loads it.
        log_level: uvicorn's log level.
    """
    os.environ[ENV_CONFIG] = config.to_env()
    own_metrics_dir = None
    if config.workers > 1 and not os.environ.get(MULTIPROC_ENV):
        own_metrics_dir = tempfile.TemporaryDirectory(prefix="danlu-metrics-")
        os.environ[MULTIPROC_ENV] = own_metrics_dir.name
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}"
    if config.workers == 1:
        from danlu.serve.app import create_app

        target: Any = create_app(config, engine)
    else:
        target = APP
    uv = uvicorn.Config(target, factory=config.workers > 1, log_level=log_level,
                        workers=config.workers,
                        timeout_graceful_shutdown=max(1, int(config.drain_s) + 5),
                        access_log=False, lifespan="on")
    stop = threading.Event()
    threading.Thread(target=_announce, args=(url, config.token, config.workers, stop),
                     daemon=True).start()
    try:
        if config.workers == 1:
            server = DrainingServer(uv)
            server.run(sockets=[sock])
            if not server.started:
                return 2
        else:
            from uvicorn.supervisors import Multiprocess

            Multiprocess(uv, target=DrainingServer(uv).run, sockets=[sock]).run()
    finally:
        stop.set()
        sock.close()
        if own_metrics_dir is not None:
            own_metrics_dir.cleanup()
    return 0


__all__ = ["run", "bind", "load_engine", "DrainingServer", "APP"]
