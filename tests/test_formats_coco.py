"""COCO instances and results JSON: xywh, category ids, iscrowd, area, image ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from _data_fixtures import make_dataset, png_bytes
from danlu.data import load_dataset, load_predictions, save_dataset, save_predictions
from danlu.errors import DatasetError


def coco_doc() -> dict:
    return {
        "info": {"description": "t"},
        "images": [{"id": 42, "file_name": "a.png", "width": 50, "height": 40},
                   {"id": 7, "file_name": "b.png", "width": 30, "height": 20},
                   {"id": 9, "file_name": "c.png", "width": 30, "height": 20}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 18, "bbox": [1, 2, 10, 20], "area": 150.5,
             "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [0, 0, 30, 20], "area": 600,
             "iscrowd": 1},
            {"id": 3, "image_id": 42, "category_id": 3, "bbox": [5.5, 6.25, 4, 4]},
        ],
        "categories": [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}],
    }


def write_coco(root: Path, doc: dict) -> Path:
    root.mkdir(parents=True)
    for im in doc["images"]:
        if isinstance(im, dict) and isinstance(im.get("file_name"), str):
            (root / "images").mkdir(exist_ok=True)
            p = root / "images" / im["file_name"]
            if p.parent == root / "images":
                p.write_bytes(png_bytes(im["width"], im["height"]))
    (root / "annotations.json").write_bytes(orjson.dumps(doc))
    return root


def test_read_conventions(tmp_path: Path) -> None:
    ds = load_dataset(write_coco(tmp_path / "c", coco_doc()))
    assert ds.class_names == ["car", "dog"]  # sorted by category id
    assert ds.meta["coco_category_ids"] == [3, 18]
    assert [s.id for s in ds] == [42, 7, 9]
    d = ds[0].detections
    np.testing.assert_allclose(d.xyxy, [[1, 2, 11, 22], [5.5, 6.25, 9.5, 10.25]])
    assert d.labels.tolist() == [1, 0]
    np.testing.assert_allclose(d.extra["area"], [150.5, 16])
    assert ds[1].detections.flags["iscrowd"].tolist() == [True]
    assert len(ds[2].detections) == 0  # image without annotations


def test_write_back_ids_area_crowd(tmp_path: Path) -> None:
    ds = load_dataset(write_coco(tmp_path / "c", coco_doc()))
    save_dataset(ds, tmp_path / "out", "coco")
    doc = orjson.loads((tmp_path / "out" / "annotations.json").read_bytes())
    assert [c["id"] for c in doc["categories"]] == [3, 18]
    assert [im["id"] for im in doc["images"]] == [42, 7, 9]
    anns = {tuple(a["bbox"]): a for a in doc["annotations"]}
    assert anns[(1.0, 2.0, 10.0, 20.0)]["category_id"] == 18
    assert anns[(1.0, 2.0, 10.0, 20.0)]["area"] == 150.5
    assert anns[(0.0, 0.0, 30.0, 20.0)]["iscrowd"] == 1
    assert doc["info"] == {"description": "t"}


def test_official_layout(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    (tmp_path / "val2017" / "x.png").write_bytes(png_bytes(20, 10))
    doc = {"images": [{"id": 1, "file_name": "x.png", "width": 20, "height": 10}],
           "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_bytes(orjson.dumps(doc))
    ds = load_dataset(tmp_path, "coco")
    assert Path(ds[0].image) == tmp_path / "val2017" / "x.png"


def test_predictions_results_json(tmp_path: Path) -> None:
    gt = load_dataset(write_coco(tmp_path / "c", coco_doc()))
    results = [{"image_id": 42, "category_id": 18, "bbox": [1, 2, 10, 20], "score": 0.9},
               {"image_id": 9, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.4}]
    (tmp_path / "r.json").write_bytes(orjson.dumps(results))
    p = load_predictions(tmp_path / "r.json", gt)
    assert [s.id for s in p] == [42, 7, 9] and p.class_names == gt.class_names
    np.testing.assert_allclose(p[0].detections.xyxy, [[1, 2, 11, 22]])
    assert p[0].detections.labels.tolist() == [1]
    assert p[1].detections.scores is not None and len(p[1].detections) == 0
    np.testing.assert_allclose(p[2].detections.scores, [0.4])
    # written back, read again
    save_predictions(p, tmp_path / "r2.json")
    q = load_predictions(tmp_path / "r2.json", gt)
    for a, b in zip(p, q, strict=True):
        assert a.detections.allclose(b.detections)


def test_predictions_unknown_image(tmp_path: Path) -> None:
    gt = load_dataset(write_coco(tmp_path / "c", coco_doc()))
    (tmp_path / "r.json").write_bytes(orjson.dumps(
        [{"image_id": 1234, "category_id": 18, "bbox": [1, 2, 3, 4], "score": 0.5}]))
    with pytest.raises(DatasetError, match="1234"):
        load_predictions(tmp_path / "r.json", gt)
    p = load_predictions(tmp_path / "r.json", gt, skip_invalid=True)
    assert len(p.meta["warnings"]) == 1


def test_predictions_from_other_formats(tmp_path: Path) -> None:
    gt_ds = make_dataset(4)
    save_dataset(gt_ds, tmp_path / "gt", "voc")
    gt = load_dataset(tmp_path / "gt")
    preds = load_dataset(tmp_path / "gt")
    for s in preds.samples:
        s.detections = s.detections.with_scores(np.linspace(0.1, 0.9, len(s.detections)))
    save_predictions(preds, tmp_path / "py", "yolo")
    p = load_predictions(tmp_path / "py", gt)
    for a, b in zip(preds, p, strict=True):
        np.testing.assert_allclose(a.detections.xyxy, b.detections.xyxy, atol=1e-3)
        np.testing.assert_allclose(a.detections.scores, b.detections.scores, atol=1e-5)
    # a bare folder of YOLO label files
    p2 = load_predictions(tmp_path / "py" / "labels" / "train", gt)
    for a, b in zip(p, p2, strict=True):
        assert a.detections.allclose(b.detections)
    # COCO results from a non-COCO ground truth: ids are the stems' numbers or 1..N
    save_predictions(preds, tmp_path / "r.json")
    p3 = load_predictions(tmp_path / "r.json", gt)
    for a, b in zip(p, p3, strict=True):
        assert a.detections.allclose(b.detections, atol=1e-3)
