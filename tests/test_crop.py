"""Object crops per class and blacked-out backgrounds."""

from __future__ import annotations

import numpy as np
from PIL import Image

from danlu.data.crop import black_out, crop_objects, object_windows
from danlu.structures import Dataset, Detections, Sample


def test_crops_and_backgrounds(tmp_path):
    img = (np.arange(20 * 30 * 3) % 251 + 1).astype(np.uint8).reshape(20, 30, 3)
    det = Detections(np.array([[2, 3, 10, 8], [15.5, 4.2, 29.1, 19], [40, 40, 50, 50]]),
                     [0, 1, 1])
    ds = Dataset([Sample(img, 30, 20, det, id="a/b")], ["cat", "dog/x"])
    summary = crop_objects(ds, tmp_path)
    assert summary == {"objects": 2, "backgrounds": 1, "skipped": 1,
                       "per_class": {"cat": 1, "dog/x": 1}}
    cat = np.asarray(Image.open(tmp_path / "objects" / "cat" / "a_b_0.png"))
    assert np.array_equal(cat, img[3:8, 2:10])
    dog = np.asarray(Image.open(tmp_path / "objects" / "dog_x" / "a_b_1.png"))
    assert np.array_equal(dog, img[4:19, 15:30])  # rounded outwards, clipped
    bg = np.asarray(Image.open(tmp_path / "backgrounds" / "a_b.png"))
    mask = np.zeros((20, 30), bool)
    mask[3:8, 2:10] = mask[4:19, 15:30] = True
    assert (bg[mask] == 0).all() and np.array_equal(bg[~mask], img[~mask])


def test_windows_and_polygon_black_out():
    det = Detections(None, [0], polygons=np.array([[[2, 2], [8, 2], [8, 8], [2, 8]]]))
    assert object_windows(det, 5, 5).tolist() == [[2, 2, 5, 5]]
    img = np.full((10, 10, 3), 200, np.uint8)
    out = black_out(img, det)
    assert (out[3:8, 3:8] == 0).all() and (out[0] == 200).all() and (img == 200).all()
