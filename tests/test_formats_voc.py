"""Pascal VOC: the 1-based inclusive convention, flags, splits, and the full-parser path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _data_fixtures import png_bytes
from danlu.data import load_dataset, save_dataset
from danlu.errors import DatasetError

XML = """<annotation>
  <folder>VOC2007</folder>
  <filename>{stem}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>
"""
OBJ = ("<object><name>{name}</name><pose>Left</pose><truncated>{t}</truncated>"
       "<difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
       "<ymax>{y2}</ymax></bndbox></object>")


def write_voc(root: Path, files: dict[str, str], sizes: dict[str, tuple[int, int]]) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem, text in files.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(png_bytes(*sizes[stem]))
    return root


def voc_file(stem: str, w: int, h: int, objs: list[dict]) -> str:
    return XML.format(stem=stem, w=w, h=h,
                      objects="\n  ".join(OBJ.format(**{"t": 0, "d": 0, **o}) for o in objs))


def test_convention_and_flags(tmp_path: Path) -> None:
    files = {"a": voc_file("a", 50, 40, [dict(name="dog", x1=1, y1=1, x2=10, y2=20, d=1),
                                         dict(name="cat", x1=5, y1=6, x2=50, y2=40, t=1)])}
    ds = load_dataset(write_voc(tmp_path / "v", files, {"a": (50, 40)}))
    d = ds[0].detections
    assert ds.class_names == ["cat", "dog"]
    # VOC pixels 1..10 inclusive -> continuous 0..10 (10 pixels wide)
    np.testing.assert_array_equal(d.xyxy, [[0, 0, 10, 20], [4, 5, 50, 40]])
    np.testing.assert_array_equal(d.area, [200, 46 * 35])
    assert d.labels.tolist() == [1, 0]
    assert d.flags["difficult"].tolist() == [True, False]
    assert d.flags["truncated"].tolist() == [False, True]
    assert ds[0].id == "a" and Path(ds[0].image).name == "a.jpg"


def test_slow_path_matches_fast_path(tmp_path: Path) -> None:
    objs = [dict(name="dog", x1=1, y1=2, x2=10, y2=20, d=1), dict(name="cat", x1=3, y1=4,
                                                                  x2=30, y2=25)]
    plain = voc_file("a", 50, 40, objs)
    # comments, attributes, a character reference and a part force the full parser
    fancy = plain.replace("<annotation>", "<annotation verified='yes'><!-- hi -->")
    fancy = fancy.replace("<name>cat</name>", "<name>c&#97;t</name><part><name>paw</name>"
                          "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax>"
                          "</bndbox></part>")
    a = load_dataset(write_voc(tmp_path / "a", {"a": plain}, {"a": (50, 40)}))
    b = load_dataset(write_voc(tmp_path / "b", {"a": fancy}, {"a": (50, 40)}))
    assert a.class_names == b.class_names
    assert a[0].detections.allclose(b[0].detections)


def test_split_selects_ids(tmp_path: Path) -> None:
    files = {s: voc_file(s, 20, 20, [dict(name="x", x1=1, y1=1, x2=5, y2=5)]) for s in "abc"}
    root = write_voc(tmp_path / "v", files, {s: (20, 20) for s in "abc"})
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "val.txt").write_text("c\na\n")
    ds = load_dataset(root, split="val")
    assert [s.id for s in ds] == ["c", "a"]
    assert len(load_dataset(root)) == 3
    with pytest.raises(DatasetError, match="split 'test' not found"):
        load_dataset(root, split="test")


def test_missing_size_is_read_from_image(tmp_path: Path) -> None:
    files = {"a": voc_file("a", 0, 0, [dict(name="x", x1=1, y1=1, x2=5, y2=5)])}
    ds = load_dataset(write_voc(tmp_path / "v", files, {"a": (33, 21)}))
    assert (ds[0].width, ds[0].height) == (33, 21)


def test_writer_keeps_class_order_and_splits(tmp_path: Path) -> None:
    files = {s: voc_file(s, 20, 20, [dict(name="zebra", x1=1, y1=1, x2=5, y2=5)]) for s in "ab"}
    ds = load_dataset(write_voc(tmp_path / "v", files, {s: (20, 20) for s in "ab"}),
                      class_names=["zebra", "ant"])
    assert ds.class_names == ["zebra", "ant"]
    ds[0].meta["split"] = "train"
    save_dataset(ds, tmp_path / "out", "voc")
    back = load_dataset(tmp_path / "out")
    assert back.class_names == ["zebra", "ant"]
    assert (tmp_path / "out" / "ImageSets" / "Main" / "train.txt").read_text() == "a\n"


def test_unknown_class_with_known_list(tmp_path: Path) -> None:
    files = {"a": voc_file("a", 20, 20, [dict(name="unicorn", x1=1, y1=1, x2=5, y2=5)])}
    root = write_voc(tmp_path / "v", files, {"a": (20, 20)})
    with pytest.raises(DatasetError, match=r"a\.xml: object\[0\]: unknown class name 'unicorn'"):
        load_dataset(root, class_names=["cat"])
