"""Datasets as people really have them: VOC images named unlike their XML, YOLO labels in
Roboflow / CVAT / LabelImg layouts, the COCO-2017 folder with several splits, and the small
edges (YOLO class-index line numbers, COCO file names outside the image folder)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest
from PIL import Image

from danlu.cli.main import main
from danlu.data import load_dataset
from danlu.data.formats._common import RawImage
from danlu.data.formats.yolo import _parse_labels
from danlu.data.io import detect_format
from danlu.errors import DatasetError


def image(path: Path, w: int = 32, h: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), (40, 80, 120)).save(path)
    return path


def text(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


# -- 1. VOC: the image by <filename>, else by the XML file's stem ---------------------------
def voc_xml(filename: str | None, name: str = "cat") -> str:
    fn = f"<filename>{filename}</filename>" if filename is not None else ""
    return (f"<annotation>{fn}<size><width>32</width><height>24</height></size>"
            f"<object><name>{name}</name><bndbox><xmin>2</xmin><ymin>3</ymin><xmax>12</xmax>"
            "<ymax>14</ymax></bndbox></object></annotation>")


def roboflow_voc(root: Path) -> Path:
    text(root / "Annotations" / "a.xml", voc_xml("a.jpg"))
    image(root / "JPEGImages" / "a.jpg")
    # Roboflow renames the files; <filename> keeps the original name
    text(root / "Annotations" / "b_jpg.rf.1f2e.xml", voc_xml("b.jpg"))
    image(root / "JPEGImages" / "b_jpg.rf.1f2e.jpg")
    text(root / "Annotations" / "c.xml", voc_xml(None, "dog"))  # no <filename>, a PNG
    image(root / "JPEGImages" / "c.png")
    return root


def test_voc_image_found_by_stem(tmp_path: Path) -> None:
    root = roboflow_voc(tmp_path / "voc")
    for skip in (False, True):
        ds = load_dataset(root, skip_invalid=skip)
        assert [s.id for s in ds] == ["a", "b_jpg.rf.1f2e", "c"] and ds.meta["warnings"] == []
        assert [Path(s.image).name for s in ds] == ["a.jpg", "b_jpg.rf.1f2e.jpg", "c.png"]
        assert [s.meta["image_found_by"] for s in ds] == ["filename", "stem", "stem"]
        assert ds.meta["image_lookup"] == {"filename": 1, "stem": 2}
        assert ds.num_boxes == 3


def test_voc_no_rule_finds_the_image(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    text(root / "Annotations" / "a.xml", voc_xml("nothere.jpg"))
    image(root / "JPEGImages" / "other.jpg")
    with pytest.raises(DatasetError, match=r"a\.xml: image file .*nothere\.jpg not found, nor "
                                           r"an image JPEGImages/a\.\* by the XML file's stem"):
        load_dataset(root)
    ds = load_dataset(root, check_images=False)
    assert ds.meta["image_lookup"] == {"filename": 0, "stem": 0, "unchecked": 1}


def test_stats_says_the_stem_rule_was_used(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root = roboflow_voc(tmp_path / "voc")
    capsys.readouterr()
    assert main(["data", "stats", str(root)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "2 of 3 images found by the annotation file's stem" in err


# -- 2. YOLO: the label files where people put them -----------------------------------------
def label(path: Path, *lines: str) -> None:
    text(path, "".join(f"{ln}\n" for ln in lines))


def test_yolo_roboflow_export(tmp_path: Path) -> None:
    root = tmp_path / "rf"
    text(root / "data.yaml", "train: ../train/images\nval: ../valid/images\n"
                             "test: ../test/images\nnc: 2\nnames: ['cat', 'dog']\n")
    for split, stem, cls in (("train", "a", 0), ("train", "b", 1), ("valid", "c", 1)):
        image(root / split / "images" / f"{stem}.jpg")
        label(root / split / "labels" / f"{stem}.txt", f"{cls} 0.5 0.5 0.25 0.5")
    assert detect_format(root) == "yolo"
    ds = load_dataset(root)
    assert [(s.id, s.meta["split"], s.detections.labels.tolist()) for s in ds] == [
        ("a", "train", [0]), ("b", "train", [1]), ("c", "val", [1])]
    np.testing.assert_allclose(ds[0].detections.xyxy, [[12, 6, 20, 18]])
    assert any("test" in n for n in ds.meta["notices"])  # the export has no test/ folder
    assert [s.id for s in load_dataset(root, split="valid")] == ["c"]


def test_yolo_roboflow_folders_without_yaml(tmp_path: Path) -> None:
    root = tmp_path / "rf"
    for split, stem in (("train", "a"), ("valid", "b")):
        image(root / split / "images" / f"{stem}.png")
        label(root / split / "labels" / f"{stem}.txt", "0 0.5 0.5 0.5 0.5")
    assert detect_format(root) == "yolo"
    ds = load_dataset(root)
    assert [(s.id, s.meta["split"]) for s in ds] == [("a", "train"), ("b", "valid")]
    assert ds.num_boxes == 2 and ds.meta["notices"] == []
    assert [s.id for s in load_dataset(root, split="val")] == ["b"]


def test_yolo_val_and_valid_are_one_split(tmp_path: Path) -> None:
    root = tmp_path / "y"
    text(root / "data.yaml", "train: images/train\nval: images/val\nnames: [a]\n")
    image(root / "images" / "train" / "t.jpg")
    label(root / "labels" / "train" / "t.txt", "0 0.5 0.5 0.5 0.5")
    image(root / "images" / "val" / "v.jpg")
    label(root / "labels" / "valid" / "v.txt", "0 0.5 0.5 0.5 0.5", "0 0.2 0.2 0.1 0.1")
    ds = load_dataset(root, split="val")
    assert [s.id for s in ds] == ["v"] and ds.num_boxes == 2


def test_yolo_labels_beside_the_images(tmp_path: Path) -> None:
    root = tmp_path / "y"  # images/ holding both, no labels/
    image(root / "images" / "a.jpg")
    label(root / "images" / "a.txt", "1 0.5 0.5 0.5 0.5")
    text(root / "classes.txt", "cat\ndog\n")
    assert detect_format(root) == "yolo"
    ds = load_dataset(root)
    assert ds.class_names == ["cat", "dog"] and ds[0].detections.labels.tolist() == [1]
    flat = tmp_path / "labelimg"  # LabelImg: one flat folder
    image(flat / "a.jpg")
    label(flat / "a.txt", "0 0.5 0.5 0.5 0.5")
    text(flat / "classes.txt", "cat\n")
    assert detect_format(flat) == "yolo"
    assert load_dataset(flat).num_boxes == 1


def test_yolo_cvat_darknet_export(tmp_path: Path) -> None:
    root = tmp_path / "cvat"
    text(root / "obj.data", "classes = 2\ntrain = data/train.txt\nnames = data/obj.names\n"
                            "backup = backup/\n")
    text(root / "obj.names", "car\nperson\n")
    for stem, cls in (("f1", 0), ("f2", 1)):
        image(root / "obj_train_data" / f"{stem}.jpg")
        label(root / "obj_train_data" / f"{stem}.txt", f"{cls} 0.5 0.5 0.5 0.5")
    text(root / "train.txt", "data/obj_train_data/f1.jpg\ndata/obj_train_data/f2.jpg\n")
    assert detect_format(root) == "yolo"
    ds = load_dataset(root)
    assert ds.class_names == ["car", "person"]
    assert [(s.id, s.meta["split"], s.detections.labels.tolist()) for s in ds] == [
        ("f1", "train", [0]), ("f2", "train", [1])]


def test_yolo_images_without_label_file_are_counted(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "y"
    text(root / "data.yaml", "train: images/train\nnames: [a]\n")
    for stem in ("a", "b", "c"):
        image(root / "images" / "train" / f"{stem}.jpg")
    label(root / "labels" / "train" / "a.txt", "0 0.5 0.5 0.5 0.5")
    ds = load_dataset(root)
    assert len(ds) == 3 and ds.num_boxes == 1
    (note,) = ds.meta["notices"]
    assert note.startswith("2 of 3 images have no label file (looked in: labels/train, "
                           "images/train (beside the images))")
    capsys.readouterr()
    assert main(["data", "stats", str(root)]) == 0
    assert "2 of 3 images have no label file" in " ".join(capsys.readouterr().err.split())


def test_yolo_no_label_file_at_all_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "y"
    text(root / "data.yaml", "val: images/val\nnames: [a]\n")
    for stem in ("a", "b"):
        image(root / "images" / "val" / f"{stem}.jpg")
        label(root / "annotations" / "val" / f"{stem}.txt", "0 0.5 0.5 0.5 0.5")
    for skip in (False, True):
        with pytest.raises(DatasetError, match=r"2 of 2 images have no label file \(looked in: "
                                               r"labels/val, labels/valid, labels/validation, "
                                               r"images/val \(beside the images\)\)"):
            load_dataset(root, skip_invalid=skip)


def test_yolo_empty_label_files_are_background(tmp_path: Path) -> None:
    root = tmp_path / "y"
    text(root / "data.yaml", "train: images/train\nnames: [a]\n")
    for stem in ("a", "b"):
        image(root / "images" / "train" / f"{stem}.jpg")
        label(root / "labels" / "train" / f"{stem}.txt")
    ds = load_dataset(root)
    assert len(ds) == 2 and ds.num_boxes == 0 and ds.meta["notices"] == []


# -- 3. COCO: the 2017 folder, one split at a time ------------------------------------------
def coco_doc(file_name: str, cat: str = "cat") -> dict:
    return {"images": [{"id": 1, "file_name": file_name, "width": 32, "height": 24}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 8],
                             "area": 80, "iscrowd": 0}],
            "categories": [{"id": 1, "name": cat}]}


def coco2017(root: Path, splits: tuple[str, ...] = ("train2017", "val2017")) -> Path:
    for s in splits:
        image(root / s / f"{s}.jpg")
        text(root / "annotations" / f"instances_{s}.json",
             orjson.dumps(coco_doc(f"{s}.jpg")).decode())
    text(root / "annotations" / "captions_val2017.json", "{}")
    return root


def test_coco_2017_layout_is_detected_and_needs_a_split(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = coco2017(tmp_path / "coco")
    assert detect_format(root) == "coco"
    with pytest.raises(DatasetError, match=r"2 COCO splits \(train2017, val2017\)") as e:
        load_dataset(root)
    assert "--split" in (e.value.hint or "")
    ds = load_dataset(root, split="val2017")
    assert Path(ds[0].image) == root / "val2017" / "val2017.jpg"
    assert ds.meta["split"] == "val2017" and ds[0].meta["split"] == "val2017"
    one = load_dataset(root / "annotations" / "instances_train2017.json")  # what the hint says
    assert Path(one[0].image) == root / "train2017" / "train2017.jpg"
    assert "instances_train2017.json" in (e.value.hint or "")
    with pytest.raises(DatasetError, match=r"split 'test2017' not found \(splits found: "
                                           r"train2017, val2017\)"):
        load_dataset(root, split="test2017")
    capsys.readouterr()
    assert main(["data", "stats", str(root)]) == 2
    assert "--split" in capsys.readouterr().err
    assert main(["data", "stats", str(root), "--split", "train2017"]) == 0


def test_coco_image_folder_fallbacks(tmp_path: Path) -> None:
    a = tmp_path / "a"  # images/<split>/
    image(a / "images" / "val" / "x.jpg")
    text(a / "annotations" / "instances_val.json", orjson.dumps(coco_doc("x.jpg")).decode())
    assert load_dataset(a)[0].image == str(a / "images" / "val" / "x.jpg")
    b = tmp_path / "b"  # images/
    image(b / "images" / "x.jpg")
    text(b / "annotations" / "instances_val.json", orjson.dumps(coco_doc("x.jpg")).decode())
    assert load_dataset(b)[0].image == str(b / "images" / "x.jpg")


def test_coco_file_names_outside_the_image_folder_are_read(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    up = image(tmp_path / "shared" / "up.jpg")
    absolute = image(tmp_path / "elsewhere" / "abs.jpg")
    (root / "images").mkdir(parents=True)
    doc = coco_doc("../../shared/up.jpg")
    doc["images"].append({"id": 2, "file_name": str(absolute), "width": 32, "height": 24})
    text(root / "annotations.json", orjson.dumps(doc).decode())
    ds = load_dataset(root)
    assert [Path(s.image) for s in ds] == [up, absolute] and ds.num_boxes == 1


# -- 4. YOLO class index: the file and the line ---------------------------------------------
def test_yolo_class_index_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    data = b"0 0.5 0.5 0.1 0.1 0.9\n1 0.5 0.5 0.1 0.1 0.8\n7 0.5 0.5 0.1 0.1 0.7\n"
    raw = RawImage(None, 32, 24, "p", str(f))
    with pytest.raises(DatasetError, match=r"p\.txt: line 3: class index 7 outside 0\.\.1"):
        _parse_labels(f, data, 32, 24, raw, num_classes=2)
    raw = RawImage(None, 32, 24, "p", str(f))
    with pytest.raises(DatasetError, match=r"p\.txt: line 4: class index -1 outside 0\.\.1"):
        _parse_labels(f, b"0 0.5 0.5 0.1 0.1\n\n1 0.5 0.5 0.1 0.1\n-1 0.5 0.5 0.1 0.1\n",
                      32, 24, raw, num_classes=2)
