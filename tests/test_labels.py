"""drop-labels (exact per-class counts, recorded indices) and filter-small."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.labels import drop_labels, filter_small
from danlu.structures import Dataset, Detections, Sample


def _dataset(label_lists, sizes=None):
    samples = []
    for i, labels in enumerate(label_lists):
        n = len(labels)
        side = (np.arange(n, dtype=np.float32) + 1 + i) if sizes is None else np.asarray(sizes[i])
        boxes = np.stack([np.zeros(n), np.zeros(n), side, side], 1)
        samples.append(Sample(None, 100, 100, Detections(boxes, labels), id=f"im{i}"))
    return Dataset(samples, ["a", "b", "c"])


@settings(max_examples=80, deadline=None)
@given(labels=st.lists(st.lists(st.integers(0, 2), max_size=6), max_size=12),
       rate=st.floats(0, 1), seed=st.integers(0, 50), per_class=st.booleans())
def test_exact_counts_and_recorded_indices(labels, rate, seed, per_class):
    ds = _dataset(labels)
    out = drop_labels(ds, rate, seed=seed, per_class=per_class)
    before = np.concatenate([s.detections.labels for s in ds] + [np.zeros(0, np.int64)])
    after = np.concatenate([s.detections.labels for s in out] + [np.zeros(0, np.int64)])
    groups = range(3) if per_class else [None]
    for c in groups:
        n = len(before) if c is None else int((before == c).sum())
        m = len(after) if c is None else int((after == c).sum())
        assert n - m == int(np.floor(rate * n + 0.5))
    info = out.meta["dropped"]
    for s, t in zip(ds, out, strict=True):
        idx = info["indices"].get(s.id, [])
        keep = np.setdiff1d(np.arange(len(s.detections)), idx)
        assert t.detections.allclose(s.detections[keep])
        assert (s.id in info["emptied"]) == (len(s.detections) > 0 and len(t.detections) == 0)
    assert ds.num_boxes == len(before)  # the input is unchanged


def test_determinism_and_meta():
    ds = _dataset([[0, 1, 2, 0, 1], [0, 0, 2], [1]])
    a = drop_labels(ds, 0.5, seed=3)
    b = drop_labels(ds, 0.5, seed=3)
    assert a.meta["dropped"] == b.meta["dropped"]
    assert a.meta["dropped"]["counts"] == {"a": 2, "b": 2, "c": 1}  # round half up of 1.5, 1.5, 1
    assert drop_labels(ds, 0.0).num_boxes == 9 and drop_labels(ds, 1.0).num_boxes == 0
    assert sorted(drop_labels(ds, 1.0).meta["dropped"]["emptied"]) == ["im0", "im1", "im2"]


def test_filter_small_mean_and_explicit():
    # areas 1, 4, 9 | 16, 25 -> mean 11
    ds = _dataset([[0, 1, 2], [0, 1]], sizes=[[1, 2, 3], [4, 5]])
    out = filter_small(ds)
    assert out.meta["filter_small"] == {"min_area": 11.0, "removed": 3}
    assert [s.detections.area.tolist() for s in out] == [[], [16.0, 25.0]]
    out = filter_small(ds, min_area=4)
    assert [s.detections.area.tolist() for s in out] == [[4.0, 9.0], [16.0, 25.0]]
    assert filter_small(Dataset([], ["a"])).meta["filter_small"]["removed"] == 0
