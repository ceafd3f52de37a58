"""DOTA: header lines, polygons, optional difficult, official class lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _data_fixtures import png_bytes
from danlu.data import load_dataset, save_dataset
from danlu.data.formats.dota import DOTA_V1_CLASSES, DOTA_V2_CLASSES
from danlu.errors import DatasetError


def make_dota(root: Path, files: dict[str, tuple[tuple[int, int], str]]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labelTxt").mkdir()
    for stem, (size, text) in files.items():
        (root / "images" / f"{stem}.png").write_bytes(png_bytes(*size))
        (root / "labelTxt" / f"{stem}.txt").write_text(text)
    return root


def test_read_polygons_headers_flags(tmp_path: Path) -> None:
    text = ("imagesource:GoogleEarth\ngsd:0.146\n"
            "10 10 30 12 28 30 8 28 plane 0\n"
            "1 1 5 1 5 5 1 5 small-vehicle 1\n"
            "40 40 45 40 45 45 40 45 ship\n")
    ds = load_dataset(make_dota(tmp_path / "d", {"P0001": ((64, 64), text)}))
    s = ds[0]
    assert s.meta == {"imagesource": "GoogleEarth", "gsd": 0.146}
    assert ds.class_names == ["plane", "ship", "small-vehicle"]
    d = s.detections
    assert d.is_oriented
    np.testing.assert_array_equal(d.polygons[0], [[10, 10], [30, 12], [28, 30], [8, 28]])
    np.testing.assert_array_equal(d.xyxy[0], [8, 10, 30, 30])
    assert d.flags["difficult"].tolist() == [False, True, False]


def test_official_class_list_and_roundtrip(tmp_path: Path) -> None:
    text = "gsd:null\n10 10 30 12 28 30 8 28 helipad 0\n"
    root = make_dota(tmp_path / "d", {"a": ((64, 64), text)})
    with pytest.raises(DatasetError, match="unknown class name 'helipad'"):
        load_dataset(root, class_names="dota-v1.0")
    ds = load_dataset(root, class_names="dota-v2.0")
    assert ds.class_names == DOTA_V2_CLASSES and len(DOTA_V1_CLASSES) == 15
    assert ds[0].meta["gsd"] is None
    save_dataset(ds, tmp_path / "out", "dota")
    assert (tmp_path / "out" / "labelTxt" / "a.txt").read_text() == text
    back = load_dataset(tmp_path / "out")
    assert back.class_names == DOTA_V2_CLASSES
    assert back[0].detections.allclose(ds[0].detections)


def test_points_may_stick_out_but_not_lie_outside(tmp_path: Path) -> None:
    root = make_dota(tmp_path / "d", {"a": ((20, 20), "-2 -2 10 -2 10 10 -2 10 x 0\n"
                                                      "30 30 40 30 40 40 30 40 x 0\n")})
    with pytest.raises(DatasetError, match=r"a\.txt: line 2: box lies entirely outside"):
        load_dataset(root)
    ds = load_dataset(root, skip_invalid=True)
    assert len(ds[0].detections) == 1 and len(ds.meta["warnings"]) == 1
