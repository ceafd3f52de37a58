"""Drawing detections and the HTML gallery."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from danlu.data.show import class_colour, draw_detections, show_dataset
from danlu.data.synth import synthesize
from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample


def test_box_outline_in_class_colour_and_input_untouched():
    img = np.zeros((64, 64, 3), np.uint8)
    det = Detections(np.array([[10, 30, 30, 50]]), np.array([2]))
    out = draw_detections(img, det, ["a", "b", "c"])
    assert not img.any() and out.shape == (64, 64, 3)
    c = class_colour(2)
    assert tuple(out[40, 10]) == c and tuple(out[40, 29]) == c  # left / right edge
    assert tuple(out[49, 20]) == c  # bottom edge: last covered row is y2 - 1
    assert not out[40, 20].any()  # inside stays untouched
    assert tuple(out[40, 31]) == (0, 0, 0)


def test_polygon_scores_and_grey_input():
    grey = np.zeros((48, 48), np.uint8)
    poly = np.array([[[20, 20], [40, 25], [35, 40], [15, 35]]], np.float32)
    det = Detections(None, np.array([0]), polygons=poly)
    out = draw_detections(grey, det, ["plane"])
    assert out.shape == (48, 48, 3)
    assert tuple(out[25, 40]) == class_colour(0)  # a vertex lies on the outline
    with_score = draw_detections(grey, det.with_scores([0.5]), ["plane"])
    assert not np.array_equal(out, with_score)  # the caption changed


def test_show_dataset_writes_pngs_and_self_contained_html(tmp_path):
    ds = synthesize("shapes", 3, seed=0, image_size=(64, 64), scale_range=(12, 20))
    page = show_dataset(ds, tmp_path)
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == [f"shapes_00000{i}.png" for i in range(3)]
    text = page.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(embedded) == 3
    assert "<img" in text and 'src="shapes' not in text  # no relative links
    assert base64.b64decode(embedded[0]) == (tmp_path / pngs[0]).read_bytes()
    with Image.open(io.BytesIO(base64.b64decode(embedded[0]))) as im:
        assert im.size == (64, 64)


def test_show_dataset_limit_and_classes(tmp_path):
    dets = [Detections(np.array([[1, 1, 5, 5]]), [k]) for k in (0, 1, 0, 1)]
    ds = Dataset([Sample(np.zeros((8, 8, 3), np.uint8), 8, 8, d, id=f"im{i}")
                  for i, d in enumerate(dets)], ["cat", "dog"])
    show_dataset(ds, tmp_path / "dogs", classes=["dog"])
    assert sorted(p.name for p in (tmp_path / "dogs").glob("*.png")) == ["im1.png", "im3.png"]
    show_dataset(ds, tmp_path / "two", limit=2)
    assert len(list((tmp_path / "two").glob("*.png"))) == 2
    with pytest.raises(ConfigError, match="unknown class"):
        show_dataset(ds, tmp_path / "x", classes=["bird"])
