"""Read -> write -> read for every pair of formats: boxes, class names and shared flags survive."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from _data_fixtures import make_dataset
from danlu.data import detect_format, load_dataset, save_dataset
from danlu.errors import DatasetError
from danlu.structures import Dataset

FORMATS = ["voc", "coco", "yolo", "yolo-obb", "dota", "labelme", "cvat"]
FLAGS = {"voc": {"difficult", "truncated"}, "coco": {"difficult", "truncated", "iscrowd"},
         "yolo": set(), "yolo-obb": set(),
         "dota": {"difficult"}, "labelme": {"difficult", "truncated", "iscrowd"},
         "cvat": {"difficult", "truncated", "iscrowd"}}


def _by_stem(ds: Dataset) -> dict[str, object]:
    return {Path(s.image).stem: s for s in ds.samples}


def assert_same(a: Dataset, b: Dataset, flags: set[str], atol: float) -> None:
    sa, sb = _by_stem(a), _by_stem(b)
    assert sorted(sa) == sorted(sb)
    for stem, s in sa.items():
        t = sb[stem]
        assert (s.width, s.height) == (t.width, t.height)
        da, db = s.detections, t.detections
        assert len(da) == len(db), stem
        names_a = [a.class_names[i] for i in da.labels]
        names_b = [b.class_names[i] for i in db.labels]
        assert names_a == names_b
        np.testing.assert_allclose(da.xyxy, db.xyxy, atol=atol, rtol=0)
        for f in flags:
            np.testing.assert_array_equal(da.flag(f), db.flag(f), err_msg=f)
        if da.polygons is not None and db.polygons is not None:
            np.testing.assert_allclose(da.polygons, db.polygons, atol=atol, rtol=0)


@pytest.mark.parametrize(("src", "dst"), list(itertools.product(FORMATS, FORMATS)))
def test_roundtrip_pairs(tmp_path: Path, src: str, dst: str) -> None:
    flags = tuple(sorted(FLAGS[src]))
    ds0 = make_dataset(6, seed=FORMATS.index(src) * 7 + FORMATS.index(dst), integer=False,
                       flags=flags)
    save_dataset(ds0, tmp_path / "a", src)
    assert detect_format(tmp_path / "a") == src
    a = load_dataset(tmp_path / "a")
    assert a.meta["format"] == src and a.meta["warnings"] == []
    assert len(a) == len(ds0) and a.num_boxes == ds0.num_boxes
    save_dataset(a, tmp_path / "b", dst)
    b = load_dataset(tmp_path / "b", dst)
    assert set(b.class_names) <= set(a.class_names)
    atol = 1e-3 if "yolo" not in (src, dst) else 2e-3
    assert_same(a, b, FLAGS[src] & FLAGS[dst], atol)
    # and back again to the source format
    save_dataset(b, tmp_path / "c", src)
    c = load_dataset(tmp_path / "c", src)
    assert_same(b, c, FLAGS[src] & FLAGS[dst], atol)


def test_original_dataset_survives_each_format(tmp_path: Path) -> None:
    ds0 = make_dataset(5, integer=False)
    for fmt in FORMATS:
        save_dataset(ds0, tmp_path / fmt, fmt)
        back = load_dataset(tmp_path / fmt)
        assert back.class_names == ds0.class_names
        for s0, s1 in zip(ds0.samples, sorted(back.samples, key=lambda s: Path(s.image).stem),
                          strict=True):
            np.testing.assert_allclose(s0.detections.xyxy, s1.detections.xyxy, atol=2e-3)
            np.testing.assert_array_equal(s0.detections.labels, s1.detections.labels)
            assert Path(s1.image).is_absolute() and Path(s1.image).is_file()


def test_voc_integer_coordinates_are_exact(tmp_path: Path) -> None:
    ds0 = make_dataset(4, integer=True)
    save_dataset(ds0, tmp_path / "v1", "voc")
    a = load_dataset(tmp_path / "v1")
    save_dataset(a, tmp_path / "v2", "voc")
    for xml in sorted((tmp_path / "v1" / "Annotations").glob("*.xml")):
        t1 = xml.read_text()
        t2 = (tmp_path / "v2" / "Annotations" / xml.name).read_text()
        assert t1 == t2


def test_images_modes(tmp_path: Path) -> None:
    ds0 = make_dataset(3)
    save_dataset(ds0, tmp_path / "src", "coco")
    a = load_dataset(tmp_path / "src")
    save_dataset(a, tmp_path / "link", "yolo", images="symlink")
    img = next((tmp_path / "link" / "images" / "train").iterdir())
    assert img.is_symlink()
    assert len(load_dataset(tmp_path / "link")) == 3
    save_dataset(a, tmp_path / "none", "voc", images="none")
    assert not any((tmp_path / "none" / "JPEGImages").iterdir())
    assert len(load_dataset(tmp_path / "none", check_images=False)) == 3
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(tmp_path / "none")


def test_array_images_are_encoded(tmp_path: Path) -> None:
    ds0 = make_dataset(2)
    for s in ds0.samples:
        s.image = s.load_image()
    save_dataset(ds0, tmp_path / "d", "dota")
    back = load_dataset(tmp_path / "d")
    assert [(s.width, s.height) for s in back] == [(s.width, s.height) for s in ds0]


def test_existing_output_is_not_touched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        save_dataset(make_dataset(2), out, "voc")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    save_dataset(make_dataset(2), out, "voc", overwrite=True)
    assert (out / "Annotations").is_dir() and not (out / "keep.txt").exists()


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    ds0 = make_dataset(3)
    ds0.samples[2].image = tmp_path / "missing.png"
    with pytest.raises(DatasetError, match="not found"):
        save_dataset(ds0, tmp_path / "out", "yolo")
    assert list(tmp_path.iterdir()) == []


def test_coco_single_json(tmp_path: Path) -> None:
    ds0 = make_dataset(3)
    save_dataset(ds0, tmp_path / "d", "coco")
    a = load_dataset(tmp_path / "d")
    save_dataset(a, tmp_path / "d" / "copy.json", "coco")
    b = load_dataset(tmp_path / "d" / "copy.json")
    assert [s.image for s in b] == [s.image for s in a]


def test_bad_labels_refused_on_write(tmp_path: Path) -> None:
    ds0 = make_dataset(2)
    ds0.samples[0].detections.labels[:] = 7
    with pytest.raises(DatasetError, match="label outside"):
        save_dataset(ds0, tmp_path / "x", "coco")
