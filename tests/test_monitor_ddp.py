"""Steering a distributed run (issue 16): two CPU processes under torchrun (gloo), rank 0
serving the monitor. Every rank applies the new lr at the same step, no rank steps while the
run is paused, and ``stop`` ends both processes at the same step with exit status 0, no hang
(see tests/_monitor_ddp_train.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest
import torch

from danlu.train.checkpoint import load_checkpoint

pytest.importorskip("torch.distributed")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, doc: dict) -> httpx.Response:
    return httpx.post(url + "api/control", json={**doc, "wait": 60}, timeout=120)


def _step(url: str) -> int:
    return int(httpx.get(url + "api/state", timeout=30).json()["state"].get("step", 0))


def _until(predicate, proc, what: str, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert proc.poll() is None, f"torchrun ended ({proc.returncode}) waiting for {what}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_rank_obeys_the_control_and_stop_does_not_hang(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(HERE.parent / "src"), str(HERE),
                                           os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
           "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(HERE / "_monitor_ddp_train.py"), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        _until(lambda: (out / "monitor.json").is_file(), proc, "the monitor")
        url = orjson.loads((out / "monitor.json").read_bytes())["url"]
        _until(lambda: _step(url) >= 2, proc, "two steps")

        r = _post(url, {"action": "set", "key": "lr", "value": 5e-4})
        assert r.status_code == 200, r.text
        r = _post(url, {"action": "pause"})
        assert r.status_code == 200, r.text
        paused_at, paused_from = r.json()["step"], time.time()
        time.sleep(2.0)
        assert _step(url) == paused_at
        paused_until = time.time()
        r = _post(url, {"action": "resume"})
        assert r.status_code == 200, r.text
        _until(lambda: _step(url) >= paused_at + 2, proc, "steps after the pause")

        r = _post(url, {"action": "stop"})
        assert r.status_code == 200, r.text
        stopped_at = r.json()["step"]
        output, _ = proc.communicate(timeout=180)  # a hang fails here
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output[-4000:]
    results = sorted(line.split() for line in output.splitlines() if line.startswith("RESULT"))
    assert [r[1:] for r in results] == [["0", str(stopped_at), "stopped", "0.0005", "1"],
                                        ["1", str(stopped_at), "stopped", "0.0005", "1"]]
    for line in output.splitlines():
        if line.startswith("STEPS"):
            times = [float(t) for t in line.split()[2].split(",")]
            assert len(times) == stopped_at
            assert not [t for t in times if paused_from < t < paused_until], line[:80]
    last = load_checkpoint(out / "last.pt")
    assert last["train"]["step"] == stopped_at
    assert last["train"]["scheduler"]["base_lr"] == pytest.approx(5e-4)
