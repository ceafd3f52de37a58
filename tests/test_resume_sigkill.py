"""Kill ``danlu train`` with SIGKILL mid-epoch, resume it, and get the uninterrupted weights.

Three real processes on CPU in deterministic mode: an uninterrupted run; a run killed right after
a mid-epoch checkpoint (``--save-every-steps``); and ``danlu train --resume`` of the killed run.
Every tensor of the final ``last.pt`` (raw weights, EMA, optimizer state) and of ``best.pt`` must
be equal, and so must the rows of ``results.csv``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
import torch

from danlu.data.io import save_dataset
from danlu.data.synth import synthesize

pytest.importorskip("danlu.models")

ARGS = ["--model", "fcos-tiny", "--epochs", "3", "--batch", "4", "--img-size", "64",
        "--device", "cpu", "--deterministic", "--seed", "1", "--save-every-steps", "2",
        "--val-split", "0.25", "--no-plots", "--no-final-eval", "--workers", "0"]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "danlu.cli.main", "--quiet", "train", *args]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def _events(run) -> list[dict]:
    path = run / "history.jsonl"
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    out = []
    for line in lines:
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:  # a line being written
            pass
    return out


def _assert_same(a, b, where=""):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), f"tensors differ at {where}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    ds = synthesize("shapes", num_images=16, seed=3, image_size=(64, 64), scale_range=(12, 28))
    data = save_dataset(ds, tmp_path / "data", "yolo")
    project = tmp_path / "runs"

    # 1. the uninterrupted run
    subprocess.run(_cmd("--data", str(data), "--project", str(project), "--name", "full", *ARGS),
                   check=True, env=_env(), timeout=300)

    # 2. the same run, killed with SIGKILL as soon as a mid-epoch checkpoint exists
    killed = project / "killed"
    proc = subprocess.Popen(_cmd("--data", str(data), "--project", str(project), "--name",
                                 "killed", *ARGS), env=_env())
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if any(e["event"] == "checkpoint" and e.get("batch_in_epoch", 0) > 0
                   for e in _events(killed)):
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    events = _events(killed)
    assert not any(e["event"] == "end" for e in events)
    ckpt = torch.load(killed / "last.pt", weights_only=True)
    assert 0 < ckpt["train"]["step"] < 9 and ckpt["train"]["batch_in_epoch"] > 0

    # 3. resume it to the end
    subprocess.run(_cmd("--resume", str(killed)), check=True, env=_env(), timeout=300)
    assert any(e["event"] == "resumed" for e in _events(killed))
    assert _events(killed)[-1]["event"] == "end"

    full = torch.load(project / "full" / "last.pt", weights_only=True)
    resumed = torch.load(killed / "last.pt", weights_only=True)
    assert resumed["train"]["step"] == full["train"]["step"] == 9
    for key in ("model", "ema", "optimizer", "scheduler", "sampler"):
        _assert_same(full["train"][key], resumed["train"][key], key)
    _assert_same(full["model"], resumed["model"], "model")
    best_a = torch.load(project / "full" / "best.pt", weights_only=True)
    best_b = torch.load(killed / "best.pt", weights_only=True)
    _assert_same(best_a["model"], best_b["model"], "best")

    def rows(run):
        lines = (run / "results.csv").read_text().splitlines()
        header = lines[0].split(",")
        drop = {header.index(k) for k in ("epoch_time", "val_time", "elapsed")}
        return [[v for i, v in enumerate(line.split(",")) if i not in drop] for line in lines]

    assert rows(project / "full") == rows(killed)
