"""Dataset splits: a partition with exact sizes, stratified by each image's rarest class."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.data.split import split_dataset, split_sizes, stratum_keys
from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample


def _dataset(label_lists, num_classes=3):
    return Dataset([Sample(None, 8, 8, Detections(np.zeros((len(x), 4)), x), id=f"i{i}")
                    for i, x in enumerate(label_lists)], [f"c{k}" for k in range(num_classes)])


def test_split_sizes_hand_cases():
    assert split_sizes(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_sizes(7, (1, 1, 1)) == [3, 2, 2]
    assert split_sizes(0, (0.5, 0.5)) == [0, 0]
    assert split_sizes(5, (0.7, 0.3)) == [4, 1]  # 3.5 / 1.5 -> tie goes to the first
    assert split_sizes(3, (0, 1)) == [0, 3]
    with pytest.raises(ConfigError):
        split_sizes(3, (-1, 2))


@settings(max_examples=60, deadline=None)
@given(labels=st.lists(st.lists(st.integers(0, 3), max_size=4), max_size=40),
       ratios=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4).filter(lambda r: sum(r) > 0.01),
       seed=st.integers(0, 100), stratify=st.booleans())
def test_partition_with_exact_sizes(labels, ratios, seed, stratify):
    ds = _dataset(labels, 4)
    parts = split_dataset(ds, ratios, seed=seed, stratify=stratify)
    assert [len(p) for p in parts.values()] == split_sizes(len(ds), ratios)
    ids = [s.id for p in parts.values() for s in p]
    assert sorted(ids) == sorted(s.id for s in ds)  # every sample exactly once
    for p in parts.values():  # original order kept within a part
        pos = [int(s.id[1:]) for s in p]
        assert pos == sorted(pos)


def test_names_and_determinism():
    ds = _dataset([[i % 3] for i in range(30)])
    a = split_dataset(ds, (0.5, 0.5), seed=1)
    assert list(a) == ["train", "val"]
    assert a["val"].meta["split"] == {"name": "val", "seed": 1, "ratios": [0.5, 0.5]}
    b = split_dataset(ds, (0.5, 0.5), seed=1)
    assert [s.id for s in a["train"]] == [s.id for s in b["train"]]
    c = split_dataset(ds, (0.5, 0.5), seed=2)
    assert [s.id for s in a["train"]] != [s.id for s in c["train"]]
    assert list(split_dataset(ds, (1, 1, 1, 1))) == ["split0", "split1", "split2", "split3"]
    with pytest.raises(ConfigError):
        split_dataset(ds, (0.5, 0.5), names=["a", "a"])


def test_rare_class_is_spread_in_the_ratios():
    # 100 images of class 0; 10 of them also hold the rare class 2; 20 hold class 1.
    labels = [[0] for _ in range(70)] + [[0, 1] for _ in range(20)] + [[0, 2]] * 10
    ds = _dataset(labels)
    assert stratum_keys(ds).tolist() == [0] * 70 + [1] * 20 + [2] * 10
    for seed in range(5):
        parts = split_dataset(ds, (0.8, 0.1, 0.1), seed=seed)
        rare = [sum(2 in s.detections.labels for s in p) for p in parts.values()]
        assert rare == [8, 1, 1]
        mid = [sum(1 in s.detections.labels for s in p) for p in parts.values()]
        assert mid == [16, 2, 2]
    unstratified = [
        [sum(2 in s.detections.labels for s in p)
         for p in split_dataset(ds, (0.8, 0.1, 0.1), seed=seed, stratify=False).values()]
        for seed in range(20)]
    assert any(r != [8, 1, 1] for r in unstratified)  # chance alone does not do it
