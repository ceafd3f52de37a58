"""Nothing lost in silence: what the output format cannot hold is a warning with its count,
and what it can hold is written (VOC's ``difficult`` into COCO).

The counts are checked against an independent parse of the source files (ElementTree for
VOC, shapely for DOTA's quadrilaterals), not against danlu's reader.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from _cli import danlu
from _data_fixtures import png_bytes
from danlu.data import conversion_losses, load_dataset, save_dataset
from danlu.structures import Dataset, Detections, Sample

OBJECT = ("<object><name>{name}</name><difficult>{d}</difficult><truncated>{t}</truncated>"
          "<bndbox><xmin>{x1}</xmin><ymin>5</ymin><xmax>{x2}</xmax><ymax>30</ymax></bndbox>"
          "</object>")


def _voc(root: Path) -> Path:
    """Three images; 'potted plant' and 'dining table' have spaces; some boxes difficult."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    rows = [[("potted plant", 1, 0), ("dog", 0, 1)], [("dining table", 1, 1)],
            [("dog", 0, 0), ("potted plant", 0, 0), ("dog", 1, 0)]]
    for i, objs in enumerate(rows):
        (root / "JPEGImages" / f"{i}.png").write_bytes(png_bytes(64, 48))
        body = "".join(OBJECT.format(name=n, d=d, t=t, x1=2 + 10 * k, x2=12 + 10 * k)
                       for k, (n, d, t) in enumerate(objs))
        (root / "Annotations" / f"{i}.xml").write_text(
            f"<annotation><filename>{i}.png</filename><size><width>64</width>"
            f"<height>48</height><depth>3</depth></size>{body}</annotation>")
    return root


def _count(root: Path, tag: str) -> int:
    return sum(int(o.findtext(tag) or 0) for x in (root / "Annotations").glob("*.xml")
               for o in ET.parse(x).getroot().iter("object"))


def test_voc_to_coco_keeps_difficult_and_reads_it_back(tmp_path: Path) -> None:
    voc = _voc(tmp_path / "voc")
    r = danlu("data", "convert", voc, tmp_path / "coco", "--to", "coco", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning" not in r.stderr
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert sum(a["attributes"]["difficult"] for a in doc["annotations"]) == _count(voc,
                                                                                   "difficult")
    assert all(a["iscrowd"] == 0 for a in doc["annotations"])
    back = load_dataset(tmp_path / "coco")
    assert sum(int(s.detections.flag("difficult").sum()) for s in back) == 3
    assert sum(int(s.detections.flag("truncated").sum()) for s in back) == _count(voc,
                                                                                  "truncated")
    # and to VOC again: the same flags in the XML
    save_dataset(back, tmp_path / "voc2", "voc")
    assert _count(tmp_path / "voc2", "difficult") == _count(voc, "difficult")


def test_voc_to_dota_and_yolo_warn_with_counts(tmp_path: Path) -> None:
    voc = _voc(tmp_path / "voc")
    r = danlu("data", "convert", voc, tmp_path / "dota", "--to", "dota", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ("warning: DOTA keeps only difficult: 'truncated' dropped on "
            f"{_count(voc, 'truncated')} of 6 boxes") in r.stderr
    assert ("warning: DOTA class names cannot hold spaces: 2 classes renamed ('dining table' -> "
            "'dining-table', 'potted plant' -> 'potted-plant')") in r.stderr
    r = danlu("data", "convert", voc, tmp_path / "yolo", "--to", "yolo", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert lines == [f"warning: YOLO holds no per-box flags: 'difficult' dropped on "
                     f"{_count(voc, 'difficult')} of 6 boxes, 'truncated' dropped on "
                     f"{_count(voc, 'truncated')} of 6 boxes"]


def test_oriented_boxes_into_an_axis_aligned_format(tmp_path: Path) -> None:
    root = tmp_path / "dota"
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    (root / "images" / "a.png").write_bytes(png_bytes(200, 100))
    quads = ["10 10 60 20 50 60 0 50", "100 10 150 10 150 40 100 40",  # rotated, axis-aligned
             "150 40 150 90 190 90 190 40", "120 60 140 65 135 90 115 85"]
    (root / "labelTxt" / "a.txt").write_text("".join(f"{q} plane 0\n" for q in quads))
    rotated = 0
    for q in quads:
        poly = Polygon(np.array(q.split(), float).reshape(4, 2))
        rotated += not np.isclose(poly.area, poly.envelope.area)
    assert rotated == 2
    r = danlu("data", "convert", root, tmp_path / "voc", "--to", "voc", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (f"warning: VOC holds no oriented boxes: {rotated} written as their axis-aligned "
            "enclosing boxes") in r.stderr
    r = danlu("data", "convert", root, tmp_path / "obb", "--to", "yolo-obb", cwd=tmp_path)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    r = danlu("data", "stats", tmp_path / "obb", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r'"boxes":\s*4', r.stdout)


def test_scores_into_a_format_without_them() -> None:
    det = Detections(np.array([[0, 0, 4, 4], [1, 1, 5, 5]]), np.array([0, 0]),
                     scores=np.array([0.9, 0.2]))
    ds = Dataset([Sample(None, 8, 8, det), Sample(None, 8, 8, det)], ["a"])
    assert conversion_losses(ds, "voc") == ["VOC holds no scores: 4 scores dropped"]
    assert conversion_losses(ds, "labelme") == ["LabelMe holds no scores: 4 scores dropped"]
    assert conversion_losses(ds, "coco") == conversion_losses(ds, "cvat") == []
    # a flag that is false on every box loses nothing
    det.flags["difficult"] = np.zeros(2, bool)
    assert conversion_losses(ds, "yolo") == []


def test_cvat_coco_export_attributes(tmp_path: Path) -> None:
    """CVAT's COCO export writes per-annotation attributes: the booleans are flags, the rest
    a notice."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(png_bytes(64, 48))
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10], "area": 100,
             "iscrowd": 0, "attributes": {"occluded": True, "color": "red"}},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 5, 10, 10], "area": 100,
             "iscrowd": 0, "attributes": {"occluded": False}},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [30, 5, 10, 10], "area": 100,
             "iscrowd": 0}]
    doc = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
           "annotations": anns, "categories": [{"id": 1, "name": "car"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(doc))
    ds = load_dataset(tmp_path)
    assert ds.samples[0].detections.flag("occluded").tolist() == [True, False, False]
    assert ds.meta["notices"] == ["annotation attributes that are not true/false are not kept: "
                                  "'color' on 1"]


def test_difficult_in_a_coco_file_is_evaluated_as_pycocotools_does(tmp_path: Path) -> None:
    """The difficult attribute survives VOC -> COCO, and the COCO metrics of that file are
    still pycocotools' on the same file (which does not look at attributes)."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from danlu.data import load_predictions
    from danlu.evaluate import evaluate

    voc = _voc(tmp_path / "voc")
    save_dataset(load_dataset(voc), tmp_path / "coco", "coco")
    gt = load_dataset(tmp_path / "coco")
    assert sum(int(s.detections.flag("difficult").sum()) for s in gt) == 3
    rng = np.random.default_rng(0)
    doc = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"],
                "bbox": [v + float(rng.uniform(-2, 2)) for v in a["bbox"]],
                "score": float(rng.random())} for a in doc["annotations"][::2]]
    (tmp_path / "results.json").write_text(json.dumps(results))
    preds = load_predictions(tmp_path / "results.json", gt)
    ours = evaluate(gt, preds, protocol="coco").stats
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO(str(tmp_path / "coco" / "annotations.json"))
        e = COCOeval(cg, cg.loadRes(str(tmp_path / "results.json")), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    np.testing.assert_allclose(ours, e.stats, atol=1e-12)
