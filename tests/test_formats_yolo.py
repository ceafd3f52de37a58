"""YOLO (Ultralytics layout): data.yaml, splits, normalized cxcywh, missing label files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _data_fixtures import png_bytes
from danlu.data import load_dataset
from danlu.errors import DatasetError


def make_yolo(root: Path, yaml_text: str | None, files: dict[str, tuple[tuple[int, int],
                                                                         str | None]]) -> Path:
    for rel, (size, labels) in files.items():
        img = root / "images" / rel
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(png_bytes(*size))
        if labels is not None:
            lab = (root / "labels" / rel).with_suffix(".txt")
            lab.parent.mkdir(parents=True, exist_ok=True)
            lab.write_text(labels)
    if yaml_text is not None:
        (root / "data.yaml").write_text(yaml_text)
    return root


def test_read_conventions_and_splits(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "y", "train: images/train\nval: images/val\n"
                     "names: {0: cat, 1: dog}\n", {
                         "train/a.png": ((100, 50), "1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.2 0.2\n"),
                         "train/b.png": ((40, 40), None),
                         "val/c.png": ((20, 10), ""),
                     })
    ds = load_dataset(root)
    assert ds.class_names == ["cat", "dog"]
    assert [s.id for s in ds] == ["a", "b", "c"]
    assert [s.meta["split"] for s in ds] == ["train", "train", "val"]
    np.testing.assert_allclose(ds[0].detections.xyxy, [[40, 15, 60, 35], [0, 0, 20, 10]],
                               atol=1e-4)
    assert ds[0].detections.labels.tolist() == [1, 0]
    assert len(ds[1].detections) == 0 and len(ds[2].detections) == 0
    assert (ds[0].width, ds[0].height) == (100, 50)
    assert [s.id for s in load_dataset(root, split="val")] == ["c"]


def test_names_list_path_and_txt_lists(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "y", None, {"a.png": ((10, 10), "0 0.5 0.5 1 1\n"),
                                             "b.png": ((10, 10), "0 0.5 0.5 0.5 0.5\n")})
    (root / "train.txt").write_text("./images/a.png\n")
    (root / "data.yaml").write_text("path: .\ntrain: train.txt\nnames: [thing]\n")
    ds = load_dataset(root)
    assert [s.id for s in ds] == ["a"] and ds.class_names == ["thing"]


def test_scores_column(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "y", "train: images\nnames: [a]\n",
                     {"a.png": ((10, 10), "0 0.5 0.5 0.2 0.2 0.75\n")})
    ds = load_dataset(root)
    np.testing.assert_allclose(ds[0].detections.scores, [0.75])


def test_no_yaml_with_classes_txt(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "y", None, {"a.png": ((10, 10), "2 0.5 0.5 0.2 0.2\n")})
    (root / "classes.txt").write_text("x\ny\nz\n")
    ds = load_dataset(root, "yolo")
    assert ds.class_names == ["x", "y", "z"] and ds[0].detections.labels.tolist() == [2]


def test_class_index_out_of_range(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "y", "train: images\nnames: [a]\n",
                     {"a.png": ((10, 10), "0 0.5 0.5 0.2 0.2\n3 0.5 0.5 0.2 0.2\n")})
    with pytest.raises(DatasetError,
                       match=r"a\.txt: line 2: class index 3 outside 0\.\.0 \(known: a\)"):
        load_dataset(root)
    ds = load_dataset(root, skip_invalid=True)
    assert len(ds[0].detections) == 1 and len(ds.meta["warnings"]) == 1


def test_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "y", "train: images\nnames: [a]\n",
                     {"a.png": ((10, 10), "0 0.5 0.5 0.2 0.2\n\n0 0.5 0.5 -0.2 0.2\n")})
    with pytest.raises(DatasetError, match="line 3: negative box width"):
        load_dataset(root)
