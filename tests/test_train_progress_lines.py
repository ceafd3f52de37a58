"""The epoch and end lines of ``danlu train`` name the protocol's numbers: COCO's AP50/AP, and
VOC/DOTA's mAP (oriented data are validated by DOTA task 1, whose result has no ``AP``)."""

from __future__ import annotations

import subprocess
import sys


def test_oriented_data_print_val_map(tmp_path):
    def danlu(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "danlu", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)

    r = danlu("data", "synth", "--to", "dota", "--out", "d", "--num-images", "6",
              "--image-size", "64", "--scale", "12,28")
    assert r.returncode == 0, r.stderr
    r = danlu("train", "--data", "d", "--epochs", "1", "--img-size", "64", "--batch", "2",
              "--val-split", "0.5", "--max-steps", "1", "--name", "r", "--no-plots")
    assert r.returncode == 0, r.stderr
    epoch = next(line for line in r.stderr.splitlines() if line.startswith("epoch 1/"))
    done = next(line for line in r.stderr.splitlines() if line.startswith("done"))
    assert "val mAP " in epoch and "best.pt val mAP " in done
