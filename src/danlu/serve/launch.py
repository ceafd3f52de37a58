"""Start a ``danlu serve`` or ``danlu worker`` process from Python and wait until it is ready
(tests, benchmarks).

Example:
    >>> from danlu.serve.launch import ServerProcess, WorkerProcess
    >>> with ServerProcess("runs/demo/best.pt", ["--max-batch", "8"]) as srv:  # doctest: +SKIP
    ...     httpx.post(srv.url + "/v1/detect", files={"image": open("a.jpg", "rb")})
    >>> url = "redis://127.0.0.1:6379/0"
    >>> with ServerProcess("best.pt", ["--redis", url]) as web:  # doctest: +SKIP
    ...     with WorkerProcess("best.pt", url) as worker:
    ...         httpx.post(web.url + "/v1/detect", files={"image": open("a.jpg", "rb")})
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from danlu.errors import ServeError

#: the line a server prints on stderr once it answers requests
READY = re.compile(r"danlu serve: ready on (http://\S+)")
#: the line a worker prints on stderr once it reads jobs (its name)
WORKER_READY = re.compile(r"danlu worker (\S+): ready")


class _Child:
    """A ``python -m danlu ...`` child process that prints a ready line on stderr."""

    ready_line = READY
    what = "danlu serve"

    def __init__(self, args: list[str], env: dict[str, str] | None,
                 ready_timeout_s: float) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.url = ""
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self) -> _Child:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=self.env)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "".join(self.lines[-20:])
                raise ServeError(f"{self.what} did not become ready "
                                 f"(exit {self.proc.returncode}):\n{tail}")
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = self.ready_line.search(line)
            if m and not self._ready.is_set():
                self.url = m.group(1)
                self._ready.set()

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int | None:
        """Send ``sig``, wait up to ``timeout_s``, then kill; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> int | None:
        """SIGKILL (a crash: nothing is finished or handed back); returns the exit status."""
        return self.stop(signal.SIGKILL)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def __enter__(self) -> _Child:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class ServerProcess(_Child):
    """``python -m danlu serve MODEL --port 0 OPTIONS...`` as a child process.

    Args:
        model: what ``danlu serve`` takes as MODEL.
        options: more command-line options (``--port`` is 0 unless given: a free port).
        env: extra environment variables for the child.
        ready_timeout_s: how long to wait for the ready line before giving up.

    Attributes:
        url: ``http://127.0.0.1:PORT`` once started.
        proc: the :class:`subprocess.Popen`.
        lines: every stderr line the server printed so far.
    """

    def __init__(self, model: str | Path, options: Sequence[str] = (), *,
                 env: dict[str, str] | None = None, ready_timeout_s: float = 180.0) -> None:
        args = [sys.executable, "-m", "danlu", "serve", str(model), *options]
        if "--port" not in options:
            args += ["--port", "0"]
        super().__init__(args, env, ready_timeout_s)


class WorkerProcess(_Child):
    """``python -m danlu worker MODEL --redis URL OPTIONS...`` as a child process.

    Args:
        model: what ``danlu worker`` takes as MODEL.
        redis_url: the Redis (``--redis``).
        options: more command-line options (``--name``, ``--redis-prefix``...).
        env: extra environment variables (``DANLU_WORKER_FAULTS`` for the test-only faults).
        ready_timeout_s: how long to wait for the ready line before giving up.

    Attributes:
        name: the worker's name (its consumer name), once started.
        proc: the :class:`subprocess.Popen`; lines: its stderr so far.
    """

    ready_line = WORKER_READY
    what = "danlu worker"

    def __init__(self, model: str | Path, redis_url: str, options: Sequence[str] = (), *,
                 env: dict[str, str] | None = None, ready_timeout_s: float = 180.0) -> None:
        super().__init__([sys.executable, "-m", "danlu", "worker", str(model), "--redis",
                          redis_url, *options], env, ready_timeout_s)

    @property
    def name(self) -> str:
        return self.url  # the ready line's capture: the name


__all__ = ["ServerProcess", "WorkerProcess", "READY", "WORKER_READY"]
