"""A real ``redis-server`` for the Redis tests: a free loopback port, a temporary folder, no
persistence (``--save '' --appendonly no``), stopped after; skipped with the reason when
``redis-server`` is not installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server --port PORT --bind 127.0.0.1 --save '' --appendonly no`` in a temporary
    folder; :meth:`restart` brings it back on the same port, empty (a restart that lost its
    data, as one without persistence does)."""

    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="danlu-redis-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):  # a safety bound: it answers within milliseconds
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with status {self.proc.returncode}")
            try:
                if self.client().ping():
                    return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING")

    def client(self):  # noqa: ANN201 - redis.Redis
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_server_or_skip() -> RedisServer:
    """A started :class:`RedisServer`, or skip the test (naming what is missing)."""
    pytest.importorskip("redis", reason="the redis client (redis-py) is not installed")
    exe = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None)
    if exe is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    return RedisServer(exe).start()


def ttl_less_keys(client) -> list[str]:  # noqa: ANN001 - redis.Redis
    """The keys that would live forever (TTL -1)."""
    return [k.decode() for k in client.scan_iter(count=1000) if client.ttl(k) == -1]
