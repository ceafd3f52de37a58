"""Start a ``danlu serve`` process from Python and wait until it is ready (tests, benchmarks).

Example:
    >>> from danlu.serve.launch import ServerProcess
    >>> with ServerProcess("runs/demo/best.pt", ["--max-batch", "8"]) as srv:  # doctest: +SKIP
    ...     httpx.post(srv.url + "/v1/detect", files={"image": open("a.jpg", "rb")})
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


class ServerProcess:
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
        self.args = [sys.executable, "-m", "danlu", "serve", str(model), *options]
        if "--port" not in options:
            self.args += ["--port", "0"]
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.url = ""
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=self.env)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = "".join(self.lines[-20:])
                raise ServeError(f"danlu serve did not become ready "
                                 f"(exit {self.proc.returncode}):\n{tail}")
        return self

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = READY.search(line)
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

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["ServerProcess", "READY"]
