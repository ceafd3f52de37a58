"""Detections / Sample / Dataset behaviour."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from danlu import Dataset, Detections, Sample
from danlu.errors import DatasetError
from danlu.testing import assert_detections_close


def _dets(n: int, seed: int = 0, scores: bool = True) -> Detections:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(1, 50, (n, 2))
    return Detections(np.concatenate([xy, xy + wh], 1), rng.integers(0, 5, n),
                      scores=rng.uniform(0, 1, n) if scores else None,
                      flags={"difficult": rng.uniform(size=n) < 0.3})


def test_dtypes_and_shapes():
    d = Detections([[0, 0, 2, 3]], [1], scores=[0.5])
    assert d.xyxy.dtype == np.float32 and d.xyxy.shape == (1, 4)
    assert d.labels.dtype == np.int64 and d.scores.dtype == np.float32
    assert d.area.tolist() == [6.0]
    assert not d.is_oriented


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="labels has length 1"):
        Detections(np.zeros((2, 4)), [0])
    with pytest.raises(ValueError, match="difficult"):
        Detections(np.zeros((2, 4)), [0, 1], flags={"difficult": [True]})


def test_indexing_by_mask_indices_slice_int():
    d = _dets(10)
    mask = d.scores > 0.5
    assert len(d[mask]) == mask.sum()
    np.testing.assert_array_equal(d[mask].flags["difficult"], d.flags["difficult"][mask])
    idx = np.array([3, 1, 3])
    np.testing.assert_array_equal(d[idx].labels, d.labels[idx])
    assert len(d[2:5]) == 3
    assert d[4].xyxy.tolist() == d.xyxy[4:5].tolist()
    assert d[-1].labels.tolist() == [d.labels[-1]]
    assert len(d[torch.tensor([0, 2])]) == 2


def test_concat_and_empty():
    a, b = _dets(3, 1), _dets(4, 2)
    c = Detections.concat([a, b])
    assert len(c) == 7
    np.testing.assert_array_equal(c.labels, np.concatenate([a.labels, b.labels]))
    e = Detections.empty(with_scores=True)
    assert len(Detections.concat([e, a])) == 3
    assert len(Detections.concat([])) == 0
    with pytest.raises(ValueError):
        Detections.concat([a, _dets(2, scores=False)])


def test_concat_fills_missing_flags():
    a = Detections([[0, 0, 1, 1]], [0], flags={"iscrowd": [True]})
    b = Detections([[0, 0, 1, 1]], [0])
    assert Detections.concat([a, b]).flags["iscrowd"].tolist() == [True, False]


def test_filter_and_sort():
    d = _dets(50)
    f = d.filter(min_score=0.5, labels=[1, 2])
    assert (f.scores >= 0.5).all() and set(f.labels.tolist()) <= {1, 2}
    s = d.sort_by_score()
    assert (np.diff(s.scores) <= 0).all()


def test_polygons_give_enclosing_boxes():
    poly = np.array([[[10, 0], [20, 10], [10, 20], [0, 10]]], np.float32)
    d = Detections(None, [0], polygons=poly)
    assert d.is_oriented
    assert d.xyxy.tolist() == [[0, 0, 20, 20]]
    assert d.translate(1, 2).polygons[0, 0].tolist() == [11, 2]
    assert d.scale(2, 1).xyxy.tolist() == [[0, 0, 40, 20]]


def test_torch_round_trip():
    d = _dets(6)
    t = d.to_torch("cpu")
    assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
    back = Detections.from_torch(t)
    assert_detections_close(back, Detections(d.xyxy, d.labels, d.scores))
    back2 = Detections.from_torch(t["boxes"], t["labels"], t["scores"])
    assert back2.allclose(back)


def test_dict_round_trip_and_compare():
    d = _dets(5)
    assert Detections.from_dict(d.to_dict()).allclose(d)
    other = d.with_scores(d.scores + 0.1)
    with pytest.raises(AssertionError, match="scores differ at 0"):
        assert_detections_close(other, d)


@given(st.integers(0, 30), st.integers(0, 2**31 - 1))
def test_mask_then_concat_recovers_everything(n, seed):
    d = _dets(n, seed)
    mask = np.random.default_rng(seed).uniform(size=n) < 0.5
    both = Detections.concat([d[mask], d[~mask]])
    order = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
    assert both.allclose(d[order])


def test_sample_and_dataset(tmp_path):
    path = tmp_path / "img_01.png"
    Image.new("RGB", (8, 6), (255, 0, 0)).save(path)
    s = Sample(str(path), 8, 6, _dets(2))
    assert s.id == "img_01" and s.path == path
    assert s.load_image().shape == (6, 8, 3)
    buf = io.BytesIO()
    Image.new("RGB", (4, 3)).save(buf, format="PNG")
    assert Sample(buf.getvalue(), 4, 3).load_image().shape == (3, 4, 3)
    ds = Dataset([s, Sample(None, 10, 10, id="x")], ["a", "b", "c", "d", "e"])
    assert len(ds) == 2 and ds.num_boxes == 2
    assert ds[1:].samples[0].id == "x" and ds[[1, 0]][0].id == "x"
    assert ds.class_to_index["c"] == 2
    with pytest.raises(DatasetError, match="no image"):
        ds[1].load_image()


def test_broken_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        Sample(str(bad), 1, 1).load_image()
