"""Ultralytics OBB: ``cls x1 y1 x2 y2 x3 y3 x4 y4`` normalized corners, read and written.

The oracle for the corners is the format's definition (each value times the image width or
height); shapely checks that what DOTA holds and what the OBB file holds are the same
quadrilaterals after a round trip.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon

from _data_fixtures import png_bytes
from danlu.data import detect_format, load_dataset, save_dataset
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample
from test_formats_yolo import make_yolo

# As Ultralytics' DOTA -> OBB conversion writes a line: corners normalized, 6 significant digits.
OBB_YAML = "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: plane\n  1: ship\n"
A_LINES = ("0 0.1 0.05 0.6 0.15 0.55 0.6 0.05 0.5\n"
           "1 0.700001 0.7 0.9 0.7 0.9 0.95 0.7 0.95\n")


def test_read_as_ultralytics_writes_it(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "obb", OBB_YAML, {"train/a.png": ((200, 100), A_LINES),
                                                  "val/b.png": ((64, 64), "")})
    assert detect_format(root) == "yolo-obb"
    ds = load_dataset(root)
    assert ds.meta["format"] == "yolo-obb" and ds.class_names == ["plane", "ship"]
    a = next(s for s in ds if Path(s.image).stem == "a")
    values = np.array([ln.split()[1:] for ln in A_LINES.splitlines()], np.float64)
    expected = values.reshape(-1, 4, 2) * [200, 100]
    np.testing.assert_allclose(a.detections.polygons, expected, atol=1e-4)
    np.testing.assert_allclose(a.detections.xyxy,
                               np.concatenate([expected.min(1), expected.max(1)], 1), atol=1e-4)
    assert a.detections.labels.tolist() == [0, 1]
    b = next(s for s in ds if Path(s.image).stem == "b")
    assert b.detections.polygons.shape == (0, 4, 2)
    assert {s.meta["split"] for s in ds} == {"train", "val"}


def test_plain_yolo_is_not_obb_and_mixed_files_all_get_polygons(tmp_path: Path) -> None:
    plain = make_yolo(tmp_path / "plain", "train: images\nnames: [a]\n",
                      {"a.png": ((64, 48), "0 0.5 0.5 0.25 0.5\n")})
    assert detect_format(plain) == "yolo"
    assert load_dataset(plain).samples[0].detections.polygons is None
    mixed = make_yolo(tmp_path / "mixed", "train: images\nnames: [a]\n",
                      {"a.png": ((64, 48), "0 0.5 0.5 0.25 0.5\n"),
                       "b.png": ((64, 48), "0 0.1 0.1 0.4 0.1 0.4 0.5 0.1 0.5\n")})
    ds = load_dataset(mixed, "yolo")
    assert ds.meta["format"] == "yolo-obb"
    a = next(s for s in ds if Path(s.image).stem == "a")
    # the box x 24..40, y 12..36 as its corners, clockwise from the top left
    np.testing.assert_allclose(a.detections.polygons[0],
                               [[24, 12], [40, 12], [40, 36], [24, 36]], atol=1e-4)


def test_score_column_and_errors(tmp_path: Path) -> None:
    root = make_yolo(tmp_path / "s", "train: images\nnames: [a]\n",
                     {"a.png": ((10, 10), "0 0 0 1 0 1 1 0 1 0.75\n")})
    d = load_dataset(root).samples[0].detections
    assert d.scores.tolist() == [0.75]
    np.testing.assert_allclose(d.polygons[0], [[0, 0], [10, 0], [10, 10], [0, 10]])
    bad = make_yolo(tmp_path / "bad", "train: images\nnames: [a]\n",
                    {"a.png": ((10, 10), "0 0 0 1 0 1 1 0 1\n0 0.5 0.5 0.2 0.2\n")})
    with pytest.raises(DatasetError, match=r"a\.txt: line 2: 5 values where earlier lines "
                                           r"have 9"):
        load_dataset(bad)
    seven = make_yolo(tmp_path / "seven", "train: images\nnames: [a]\n",
                      {"a.png": ((10, 10), "0 0 0 1 0 1 1\n")})
    with pytest.raises(DatasetError, match=r"line 1: expected 5 values .* or 9"):
        load_dataset(seven)
    cls = make_yolo(tmp_path / "cls", "train: images\nnames: [a]\n",
                    {"a.png": ((10, 10), "\n3 0 0 1 0 1 1 0 1\n")})
    with pytest.raises(DatasetError, match=r"line 2: class index 3 outside 0\.\.0 \(known: a\)"):
        load_dataset(cls)


def _dota(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    (root / "images" / "p1.png").write_bytes(png_bytes(300, 200))
    (root / "labelTxt" / "p1.txt").write_text(
        "imagesource:GoogleEarth\ngsd:0.5\n"
        "10 20 110 40 100 90 0 70 plane 0\n"           # rotated
        "150 50 250 50 250 150 150 150 small-vehicle 1\n"  # axis-aligned, difficult
        "200 10 290 30 280 60 190 40 plane 0\n")
    return root


def test_dota_round_trip_keeps_every_quadrilateral(tmp_path: Path) -> None:
    dota = load_dataset(_dota(tmp_path / "dota"))
    save_dataset(dota, tmp_path / "obb", "yolo-obb")
    text = (tmp_path / "obb" / "labels" / "train" / "p1.txt").read_text().splitlines()
    assert [len(ln.split()) for ln in text] == [9, 9, 9]
    obb = load_dataset(tmp_path / "obb")
    save_dataset(obb, tmp_path / "back", "dota")
    back = load_dataset(tmp_path / "back")
    assert back.class_names == dota.class_names
    for s0, s1 in zip(dota, back, strict=True):
        d0, d1 = s0.detections, s1.detections
        assert d0.labels.tolist() == d1.labels.tolist()
        for p0, p1 in zip(d0.polygons, d1.polygons, strict=True):
            a, b = Polygon(p0), Polygon(p1)
            # 6 decimals of a 300 px side: 3e-4 px per corner
            assert a.symmetric_difference(b).area < 0.05 * 1e-2 * a.length
            np.testing.assert_allclose(p0, p1, atol=5e-4)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(0, 1, width=32), min_size=8, max_size=8),
                          st.integers(0, 2)), max_size=5),
       st.integers(8, 400), st.integers(8, 400))
def test_write_read_property(quads: list, w: int, h: int) -> None:
    """Any quadrilateral inside the image survives write -> read to 6 decimals of the side."""
    pts = np.array([q for q, _ in quads], np.float64).reshape(-1, 4, 2) * [w, h]
    det = Detections(None, np.array([c for _, c in quads], np.int64),
                     polygons=pts.astype(np.float32))
    ds = Dataset([Sample(png_bytes(w, h), w, h, det, id="x")], ["a", "b", "c"])
    tmp = Path(tempfile.mkdtemp())
    save_dataset(ds, tmp / "o", "yolo-obb")
    back = load_dataset(tmp / "o", "yolo-obb")
    shutil.rmtree(tmp)
    d = back.samples[0].detections
    assert d.labels.tolist() == det.labels.tolist()
    if not quads:  # an empty label file says nothing about orientation
        return
    np.testing.assert_allclose(d.polygons.reshape(-1, 4, 2),
                               det.polygons.astype(np.float64).reshape(-1, 4, 2),
                               atol=max(w, h) * 1e-6 + 1e-3)
