"""Hard NMS, batched NMS, IoU-guided NMS and polygon NMS against independent oracles.

Oracles: torchvision.ops.nms / batched_nms (hard NMS), a plain-Python transcription of IoU-Net's
Algorithm 1 (IoU-guided NMS), a greedy loop over shapely polygons (polygon NMS).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.boxes.nms import batched_nms, iou_guided_nms, nms, polygon_nms


def random_boxes(n: int, seed: int = 0, img: float = 1000.0, lo: float = 5.0, hi: float = 100.0,
                 dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    r = np.random.default_rng(seed)
    c = r.uniform(0, img, (n, 2))
    wh = r.uniform(lo, hi, (n, 2))
    return (np.concatenate([c - wh / 2, c + wh / 2], 1).astype(dtype),
            r.random(n).astype(dtype))


def clustered_boxes(n: int, seed: int = 0, clusters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Boxes jittered around a few centres: many IoU values near any threshold."""
    r = np.random.default_rng(seed)
    centres = r.uniform(0, 2000, (clusters, 4))
    centres[:, 2:] = centres[:, :2] + r.uniform(20, 200, (clusters, 2))
    b = centres[r.integers(0, clusters, n)] + r.normal(0, 8, (n, 4))
    b[:, 2:] = np.maximum(b[:, 2:], b[:, :2] + 1)
    return b.astype(np.float32), r.random(n).astype(np.float32)


def tv_nms(b: np.ndarray, s: np.ndarray, t: float) -> np.ndarray:
    return torchvision.ops.nms(torch.from_numpy(b), torch.from_numpy(s), t).numpy()


def tv_batched(b: np.ndarray, s: np.ndarray, lab: np.ndarray, t: float) -> np.ndarray:
    return torchvision.ops.batched_nms(torch.from_numpy(b), torch.from_numpy(s),
                                       torch.from_numpy(lab), t).numpy()


# -- hard NMS against torchvision ------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 2, 50, 2000])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_matches_torchvision_random(n: int, t: float) -> None:
    b, s = random_boxes(n, seed=n)
    np.testing.assert_array_equal(nms(b, s, t), tv_nms(b, s, t))


@pytest.mark.parametrize("t", [0.1, 0.5, 0.8])
def test_nms_matches_torchvision_clustered(t: float) -> None:
    b, s = clustered_boxes(3000)
    np.testing.assert_array_equal(nms(b, s, t), tv_nms(b, s, t))


def test_nms_float64_matches_torchvision() -> None:
    b, s = clustered_boxes(1000, seed=3)
    b, s = b.astype(np.float64), s.astype(np.float64)
    np.testing.assert_array_equal(nms(b, s, 0.5), tv_nms(b, s, 0.5))


def test_nms_negative_threshold_matches_torchvision() -> None:
    b, s = random_boxes(300, seed=1)
    np.testing.assert_array_equal(nms(b, s, -0.5), tv_nms(b, s, -0.5))


def test_nms_degenerate_boxes_match_torchvision() -> None:
    b, s = random_boxes(400, seed=2)
    b[::7, 2] = b[::7, 0]  # zero width
    b[1::7, 3] = b[1::7, 1] - 5  # inverted
    b[2::7] = b[3::7]  # duplicates
    b[4::11] = np.nan
    b[5::13, 2] = np.inf
    s = s.copy()
    s[6::9] = s[7::9]  # tied scores on non-identical boxes
    np.testing.assert_array_equal(nms(b, s, 0.5), tv_nms(b, s, 0.5))


def test_nms_one_huge_box_among_small_ones() -> None:
    b, s = random_boxes(3000, seed=4)
    b = np.concatenate([b, [[0, 0, 1000, 1000]] * 40]).astype(np.float32)
    s = np.concatenate([s, np.linspace(0.2, 0.9, 40)]).astype(np.float32)
    np.testing.assert_array_equal(nms(b, s, 0.01), tv_nms(b, s, 0.01))
    np.testing.assert_array_equal(nms(b, s, 0.5), tv_nms(b, s, 0.5))


def test_ties_broken_by_lower_index() -> None:
    # identical boxes with equal scores: the lowest index survives
    b = np.tile(np.array([[0, 0, 10, 10]], np.float32), (40, 1))
    s = np.ones(40, np.float32)
    assert nms(b, s, 0.5).tolist() == [0]
    # the stable order equals torchvision on rank-valued scores, which have no ties
    b, s = clustered_boxes(2000, seed=5)
    s = np.round(s * 20).astype(np.float32) / 20  # many ties
    order = np.argsort(-s, kind="stable")
    rank_scores = np.empty_like(s)
    rank_scores[order] = np.arange(len(s), 0, -1)
    np.testing.assert_array_equal(nms(b, s, 0.5), tv_nms(b, rank_scores, 0.5))


def test_batched_nms_matches_torchvision() -> None:
    r = np.random.default_rng(0)
    for n, classes in [(0, 1), (1, 1), (500, 1), (3000, 5), (5000, 80)]:
        b, s = random_boxes(n, seed=n, img=600)
        lab = r.integers(0, classes, n)
        np.testing.assert_array_equal(batched_nms(b, s, lab, 0.5), tv_batched(b, s, lab, 0.5))
    # sparse, large label values take the sorting path; above 1000 boxes torchvision runs one
    # NMS per class (below, its coordinate offsets of label * max_coordinate lose the float32
    # precision such labels need, and its answer is wrong)
    b, s = random_boxes(1500, seed=9, img=300)
    lab = r.integers(0, 5, 1500) * 10**12
    np.testing.assert_array_equal(batched_nms(b, s, lab, 0.4), tv_batched(b, s, lab, 0.4))


def test_batched_nms_100k_same_keep_set_as_torchvision() -> None:
    b, s = random_boxes(100_000, seed=11, img=4000, lo=10, hi=200)
    lab = np.random.default_rng(1).integers(0, 80, 100_000)
    ours = batched_nms(b, s, lab, 0.5)
    ref = tv_batched(b, s, lab, 0.5)
    # same set, same score sequence; the order of equal scores is torchvision's unstable sort's
    assert set(ours.tolist()) == set(ref.tolist())
    np.testing.assert_array_equal(s[ours], s[ref])


def test_torch_in_torch_out() -> None:
    b, s = random_boxes(200)
    tb, ts = torch.from_numpy(b), torch.from_numpy(s)
    k = nms(tb, ts, 0.5)
    assert isinstance(k, torch.Tensor) and k.dtype == torch.int64
    assert torch.equal(k, torchvision.ops.nms(tb, ts, 0.5))
    k = batched_nms(tb, ts, torch.zeros(200, dtype=torch.int64), 0.5)
    assert isinstance(k, torch.Tensor) and k.dtype == torch.int64
    k = nms(b, s, 0.5)
    assert isinstance(k, np.ndarray) and k.dtype == np.int64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dispatch() -> None:
    b, s = random_boxes(500)
    tb, ts = torch.from_numpy(b).cuda(), torch.from_numpy(s).cuda()
    k = nms(tb, ts, 0.5)
    assert k.is_cuda
    assert set(k.cpu().tolist()) == set(nms(b, s, 0.5).tolist())
    keep, new = iou_guided_nms(tb, ts, ts, 0.5)
    assert keep.is_cuda and new.is_cuda


# -- properties -----------------------------------------------------------------------------

coord = st.floats(0, 100, allow_nan=False, width=32)


@st.composite
def box_sets(draw, max_n: int = 40):
    n = draw(st.integers(0, max_n))
    xy = np.array(draw(st.lists(st.tuples(coord, coord, coord, coord), min_size=n, max_size=n)),
                  dtype=np.float32).reshape(n, 4)
    b = np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1)
    s = np.array(draw(st.lists(st.sampled_from([0.1, 0.5, 0.9]) | st.floats(0, 1, width=32),
                               min_size=n, max_size=n)), dtype=np.float32)
    lab = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int64)
    return b, s, lab


def _iou_matrix(b: np.ndarray) -> np.ndarray:
    return torchvision.ops.box_iou(torch.from_numpy(b), torch.from_numpy(b)).numpy()


@settings(max_examples=150, deadline=None)
@given(box_sets(), st.sampled_from([0.0, 0.3, 0.5, 0.9]))
def test_nms_properties(data, t: float) -> None:
    b, s, lab = data
    keep = batched_nms(b, s, lab, t)
    n = len(b)
    assert len(set(keep.tolist())) == len(keep) and all(0 <= k < n for k in keep)
    assert np.all(np.diff(s[keep]) <= 0)  # sorted by score
    iou = _iou_matrix(b)
    kept = set(keep.tolist())
    for i in keep:
        for j in keep:
            if i != j and lab[i] == lab[j]:
                assert not iou[i, j] > t
    # every suppressed box overlaps a kept, higher-ranked box of its class above the threshold
    order = np.argsort(-s, kind="stable")
    rank = np.empty(n, int)
    rank[order] = np.arange(n)
    for j in set(range(n)) - kept:
        assert any(lab[i] == lab[j] and rank[i] < rank[j] and iou[i, j] > t for i in kept)
    # (these properties determine greedy NMS's result uniquely, by induction over the ranks)


# -- IoU-guided NMS ---------------------------------------------------------------------------


def iou_guided_reference(b, cls, loc, t, labels=None):
    """IoU-Net Algorithm 1, literally: pick the best localization score, absorb the cluster."""
    remaining = sorted(range(len(b)), key=lambda i: (-loc[i], i))
    iou = _iou_matrix(b)
    keep, scores = [], []
    while remaining:
        m = remaining.pop(0)
        s = cls[m]
        rest = []
        for i in remaining:
            same = labels is None or labels[i] == labels[m]
            if same and iou[m, i] > t:
                s = max(s, cls[i])
            else:
                rest.append(i)
        remaining = rest
        keep.append(m)
        scores.append(s)
    return np.array(keep, dtype=np.int64), np.array(scores, dtype=cls.dtype)


@pytest.mark.parametrize("labelled", [False, True])
def test_iou_guided_nms_matches_reference(labelled: bool) -> None:
    b, cls = clustered_boxes(600, seed=7, clusters=30)
    loc = np.random.default_rng(3).random(600).astype(np.float32)
    lab = np.random.default_rng(4).integers(0, 3, 600) if labelled else None
    keep, new = iou_guided_nms(b, cls, loc, 0.5, labels=lab)
    rk, rs = iou_guided_reference(b, cls, loc, 0.5, lab)
    np.testing.assert_array_equal(keep, rk)
    np.testing.assert_array_equal(new, rs)
    # keep set is hard NMS's under the localization ranking
    ref = nms(b, loc, 0.5) if lab is None else batched_nms(b, loc, lab, 0.5)
    np.testing.assert_array_equal(keep, ref)


def test_iou_guided_nms_empty_and_torch() -> None:
    keep, new = iou_guided_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5)
    assert keep.shape == (0,) and new.shape == (0,)
    b, cls = clustered_boxes(100)
    keep, new = iou_guided_nms(torch.from_numpy(b), torch.from_numpy(cls), torch.from_numpy(cls),
                               0.5)
    assert isinstance(keep, torch.Tensor) and isinstance(new, torch.Tensor)
    # ranking by the classification score itself: scores are unchanged
    assert torch.equal(new, torch.from_numpy(cls)[keep])


# -- polygon NMS ------------------------------------------------------------------------------


def rotated_polygons(n: int, seed: int = 0, img: float = 300.0) -> np.ndarray:
    r = np.random.default_rng(seed)
    c = r.uniform(0, img, (n, 2))
    w, h = r.uniform(5, 60, n), r.uniform(5, 60, n)
    a = r.uniform(0, np.pi, n)
    corners = np.stack([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]], 0)
    cos, sin = np.cos(a), np.sin(a)
    x = corners[:, 0] * cos - corners[:, 1] * sin + c[:, 0]
    y = corners[:, 0] * sin + corners[:, 1] * cos + c[:, 1]
    return np.stack([x, y], -1).transpose(1, 0, 2)


def shapely_polygon_nms(p: np.ndarray, s: np.ndarray, t: float, labels=None) -> list[int]:
    from shapely.geometry import Polygon

    polys = [Polygon(q) for q in p]
    order = sorted(range(len(p)), key=lambda i: (-s[i], i))
    keep: list[int] = []
    supp = set()
    for pos, i in enumerate(order):
        if i in supp:
            continue
        keep.append(i)
        for j in order[pos + 1:]:
            if j in supp or (labels is not None and labels[i] != labels[j]):
                continue
            inter = polys[i].intersection(polys[j]).area
            union = polys[i].area + polys[j].area - inter
            if union > 0 and inter / union > t:
                supp.add(j)
    return keep


@pytest.mark.parametrize("t", [0.0, 0.2, 0.5])
@pytest.mark.parametrize("labelled", [False, True])
def test_polygon_nms_matches_shapely(t: float, labelled: bool) -> None:
    p = rotated_polygons(300, seed=int(t * 10))
    s = np.random.default_rng(1).random(300)
    lab = np.random.default_rng(2).integers(0, 3, 300) if labelled else None
    assert polygon_nms(p, s, t, labels=lab).tolist() == shapely_polygon_nms(p, s, t, lab)


def test_polygon_nms_edge_cases() -> None:
    assert polygon_nms(np.zeros((0, 4, 2)), np.zeros(0), 0.5).tolist() == []
    p = rotated_polygons(5)
    assert polygon_nms(p, np.arange(5.0), -1.0).tolist() == [4]
    k = polygon_nms(torch.from_numpy(p), torch.arange(5.0), 0.5)
    assert isinstance(k, torch.Tensor) and k.dtype == torch.int64
