"""Data-parallel training with two real processes on CPU (gloo), launched by torchrun.

* DDP equals the single-process run (same global batch) up to floating point, for a model and
  loss where that holds (see tests/_ddp_train.py for why BatchNorm and FCOS's batch-wide
  normalisation are excluded): SGD keeps the difference at the level of float32 rounding.
* ``torchrun -m danlu train --distributed``: rank 0 alone writes the run; a run stopped after
  its first epoch and resumed under torchrun ends bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from danlu.train.checkpoint import load_checkpoint
from danlu.train.data import EpochBatchSampler

pytest.importorskip("torch.distributed")
if not torch.distributed.is_available():  # pragma: no cover
    pytest.skip("torch.distributed is not available", allow_module_level=True)

HERE = Path(__file__).parent


def _env() -> dict[str, str]:
    src = str(HERE.parent / "src")
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([src, str(HERE), os.environ.get("PYTHONPATH", "")]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _close(a, b, where="", *, atol=1e-5, rtol=1e-4, exact=False):
    if isinstance(a, torch.Tensor):
        if exact:
            assert torch.equal(a, b), f"tensors differ at {where}"
        elif a.is_floating_point():
            assert torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol), \
                f"{where}: max diff {(a.float() - b.float()).abs().max()}"
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _close(a[k], b[k], f"{where}/{k}", atol=atol, rtol=rtol, exact=exact)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{where}[{i}]", atol=atol, rtol=rtol, exact=exact)
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_rank_batches_partition_the_global_batch():
    single = EpochBatchSampler(16, 4, seed=7)
    ranks = [EpochBatchSampler(16, 2, seed=7, rank=r, world_size=2) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(3)
    for full, *parts in zip(single, *ranks, strict=True):
        assert sorted(full) == sorted(i for p in parts for i in p)


def test_ddp_matches_single_process(tmp_path):
    import _ddp_train

    single = tmp_path / "single"
    _ddp_train.run(str(single))
    two = tmp_path / "two"
    out = _torchrun(str(HERE / "_ddp_train.py"), str(two)).stdout
    assert out.count("RESULT 8 completed") == 2  # both ranks finished the same run
    a, b = load_checkpoint(single / "last.pt"), load_checkpoint(two / "last.pt")
    _close(a["train"]["model"], b["train"]["model"], "model")
    _close(a["train"]["ema"], b["train"]["ema"], "ema")
    _close(a["train"]["optimizer"]["state"], b["train"]["optimizer"]["state"], "optimizer")
    # rank 0's validation is what every rank saw; the logged losses are averaged over ranks
    rows_two = (two / "results.csv").read_text().splitlines()
    rows_one = (single / "results.csv").read_text().splitlines()
    assert rows_two[0] == rows_one[0] and len(rows_two) == len(rows_one) == 3
    for r2, r1 in zip(rows_two[1:], rows_one[1:], strict=True):  # loss ... AP50 columns
        np.testing.assert_allclose([float(v) for v in r2.split(",")[1:5]],
                                   [float(v) for v in r1.split(",")[1:5]], rtol=1e-4, atol=1e-5)

CLI = ["--quiet", "train", "--distributed", "--model", "fcos-tiny", "--epochs", "2",
       "--batch", "4", "--img-size", "64", "--device", "cpu", "--deterministic", "--seed", "2",
       "--val-split", "0.25", "--no-plots", "--no-final-eval"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from danlu.data.io import save_dataset
    from danlu.data.synth import synthesize

    path = tmp_path_factory.mktemp("ddpdata") / "shapes"
    ds = synthesize("shapes", num_images=16, seed=3, image_size=(64, 64), scale_range=(12, 28))
    save_dataset(ds, path, "coco")
    return path


def test_torchrun_cli_resume_matches_uninterrupted(tmp_path, dataset):
    full, part = tmp_path / "full", tmp_path / "part"
    _torchrun("-m", "danlu", *CLI, "--data", str(dataset), "--project", str(tmp_path),
              "--name", "full")
    # 12 training images, global batch 4: 3 steps per epoch; stop after the first epoch
    _torchrun("-m", "danlu", *CLI, "--data", str(dataset), "--project", str(tmp_path),
              "--name", "part", "--max-steps", "3")
    assert load_checkpoint(part / "last.pt")["epoch"] == 1
    _torchrun("-m", "danlu", "--quiet", "train", "--resume", str(part), "--max-steps", "0")
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(part / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 6
    for key in ("model", "ema", "optimizer"):
        _close(a["train"][key], b["train"][key], key, exact=True)
    assert torch.equal(a["model"]["model.head.classification_head.cls_logits.weight"],
                       b["model"]["model.head.classification_head.cls_logits.weight"])
    # only rank 0 wrote: one TensorBoard file per session, results.csv rows equal
    assert len(list(full.glob("events.out.tfevents.*"))) <= 1
    rows_a = (full / "results.csv").read_text().splitlines()
    rows_b = (part / "results.csv").read_text().splitlines()
    assert [r.split(",")[:5] for r in rows_a] == [r.split(",")[:5] for r in rows_b]
