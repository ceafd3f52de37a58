"""Files that are not danlu checkpoints get one clear line, "not a danlu checkpoint", with a
hint saying what one is, and never the advice to load unsafely (weights_only=False)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from danlu.errors import ModelError
from danlu.models.checkpoint import load_checkpoint


class Thing:
    """A class: unpickling it would run code, so the weights-only loader refuses it."""


def _bad_files(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("this is a text file\n")
    binary = tmp_path / "noise.pt"
    binary.write_bytes(bytes(range(256)) * 8)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor)
    objects = tmp_path / "objects.pt"
    torch.save({"thing": Thing()}, objects)
    return [text, binary, empty, plain, tensor, objects]


REASONS = {"notes.pt": "not a PyTorch file", "noise.pt": "not a PyTorch file",
           "empty.pt": "not a PyTorch file", "plain.pt": "without format=",
           "tensor.pt": "holding a Tensor", "objects.pt": "Python objects"}


def test_each_bad_file_says_not_a_danlu_checkpoint(tmp_path):
    for path in _bad_files(tmp_path):
        with pytest.raises(ModelError) as e:
            load_checkpoint(path)
        assert "not a danlu checkpoint" in e.value.message, (path.name, e.value.message)
        assert REASONS[path.name] in e.value.message, (path.name, e.value.message)
        said = e.value.message + (e.value.hint or "")
        assert "weights_only=False" not in said and "weights_only = False" not in said
        assert "danlu train" in (e.value.hint or "")


def test_cli_prints_one_line_and_exits_2(tmp_path):
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(img)
    for path in _bad_files(tmp_path)[:2]:
        r = subprocess.run([sys.executable, "-m", "danlu", "predict", str(path), str(img),
                            "--out", str(tmp_path / "out")], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 2
        assert "not a danlu checkpoint" in r.stderr and "Traceback" not in r.stderr
        assert "weights_only=False" not in r.stderr
