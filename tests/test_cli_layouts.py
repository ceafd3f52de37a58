"""Every command that reads a dataset takes ``--split`` (the COCO-2017 folder needs one), and
prints what the read noticed (YOLO images without label files) — not only ``data stats``."""

from __future__ import annotations

import json

import pytest
from tests._cli import danlu
from tests.test_layouts import coco2017, image, label, text


@pytest.mark.parametrize("command", [
    ["data", "show", "coco", "--out", "o"], ["data", "split", "coco", "--out", "o"],
    ["data", "tile", "coco", "--tile-size", "16", "--gap", "4", "--out", "o"],
    ["data", "crop", "coco", "--out", "o"], ["data", "filter-small", "coco", "--out", "o"],
    ["data", "drop-labels", "coco", "--rate", "0.5", "--out", "o"],
    ["data", "whitebalance", "coco", "--out", "o"],
    ["data", "pack", "coco", "--img-size", "32", "--out", "o.pack"],
    ["data", "stats", "coco"], ["data", "convert", "coco", "o", "--to", "voc"],
])
def test_data_commands_take_split(tmp_path, command):
    coco2017(tmp_path / "coco")
    r = danlu(*command, cwd=tmp_path)
    assert r.returncode == 2 and "--split" in r.stderr, r.stderr
    r = danlu(*command, "--split", "val2017", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_eval_takes_split(tmp_path):
    coco2017(tmp_path / "coco")
    pred = text(tmp_path / "p.json", '[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 8],'
                ' "score": 0.9}]')
    r = danlu("eval", "--gt", "coco", "--pred", str(pred), "--split", "val2017", "--json",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["AP"] == pytest.approx(1.0)


def test_notices_reach_convert_and_train(tmp_path):
    root = tmp_path / "y"
    text(root / "data.yaml", "train: images/train\nnames: [a]\n")
    for stem in ("a", "b", "c", "d"):
        image(root / "images" / "train" / f"{stem}.jpg", 64, 64)
    label(root / "labels" / "train" / "a.txt", "0 0.5 0.5 0.5 0.5")
    label(root / "labels" / "train" / "b.txt", "0 0.4 0.4 0.3 0.3")
    r = danlu("data", "convert", "y", "o", "--to", "coco", cwd=tmp_path)
    assert r.returncode == 0 and "2 of 4 images have no label file" in r.stderr, r.stderr
    r = danlu("train", "--data", "y", "--epochs", "1", "--img-size", "64", "--batch", "2",
              "--max-steps", "1", "--val-split", "0", "--no-plots", "--no-final-eval",
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "note: training data: 2 of 4 images have no label file" in r.stderr
