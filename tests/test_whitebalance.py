"""Reference-white colour correction: hand-computed cases and the dataset wrapper."""

from __future__ import annotations

import numpy as np
import pytest

from danlu.data.whitebalance import white_balance, white_balance_dataset, white_balance_gains
from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample


def test_hand_computed_gains():
    img = np.full((10, 10, 3), (80, 120, 150), np.uint8)
    img[0, :] = (200, 220, 250)  # exactly the brightest 10 % by luminance
    g = white_balance_gains(img, percent=10)
    assert np.allclose(g, [255 / 200, 255 / 220, 255 / 250])
    out = white_balance(img, percent=10)
    assert out[0].tolist() == [[255, 255, 255]] * 10
    assert out[5, 5].tolist() == [102, 139, 153]  # 80 * 1.275, 120 * 1.159, 150 * 1.02
    assert out.dtype == np.uint8 and img[0, 0].tolist() == [200, 220, 250]


def test_selection_is_by_luminance_not_per_channel():
    img = np.zeros((1, 20, 3), np.uint8)
    img[0, :] = (50, 50, 50)
    img[0, 0] = (255, 0, 0)  # the reddest pixel; luminance 76
    img[0, 1] = (100, 200, 100)  # the brightest pixel by luminance: 159
    g = white_balance_gains(img, percent=5)  # k = 1 pixel
    assert np.allclose(g, [2.55, 1.275, 2.55])
    out = white_balance(img, percent=5)
    assert out[0, 0].tolist() == [255, 0, 0]  # clipped at 255
    assert out[0, 1].tolist() == [255, 255, 255]


def test_ties_zero_channel_and_white_image():
    white = np.full((4, 4, 3), 255, np.uint8)
    assert np.array_equal(white_balance(white), white)
    no_blue = np.full((4, 4, 3), (100, 100, 0), np.uint8)
    out = white_balance(no_blue)
    assert out[0, 0].tolist() == [255, 255, 0]  # the zero channel keeps gain 1
    rgba = np.dstack([no_blue, np.full((4, 4), 9, np.uint8)])
    assert white_balance(rgba)[..., 3].tolist() == [[9] * 4] * 4
    with pytest.raises(ConfigError):
        white_balance(white, percent=0)
    with pytest.raises(ConfigError):
        white_balance(np.zeros((4, 4), np.uint8))


def test_dataset_keeps_boxes_and_ids():
    img = np.full((8, 8, 3), (40, 80, 160), np.uint8)
    det = Detections(np.array([[1, 1, 4, 4]]), [0])
    ds = Dataset([Sample(img, 8, 8, det, id="a")], ["x"])
    out = white_balance_dataset(ds)
    assert isinstance(out[0].image, bytes) and out[0].id == "a"
    assert out[0].load_image()[0, 0].tolist() == [255, 255, 255]
    assert out[0].detections is det and out[0].meta["white_gains"] == [6.375, 3.1875, 1.59375]
    assert ds[0].image is img
