"""Hard NMS, batched NMS, IoU-guided NMS and polygon NMS against independent oracles.

Oracles: torchvision.ops.nms / batched_nms (hard NMS), a plain-Python transcription of IoU-Net's
Algorithm 1 (IoU-guided NMS), a greedy loop over shapely polygons (polygon NMS).
"""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.boxes import _nms_sweep
from danlu.boxes._arrays import _rank_order
from danlu.boxes.nms import batched_nms, iou_guided_nms, nms, polygon_nms

# the module itself (the package attribute ``danlu.boxes.nms`` is the function)
nms_module = importlib.import_module("danlu.boxes.nms")


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


# -- the two engines: the numpy sweep (small inputs) and the numba kernel -------------------


def kernel_keep(b: np.ndarray, s: np.ndarray, lab: np.ndarray | None, t: float) -> np.ndarray:
    """The numba kernel's kept indices, bypassing the sweep."""
    kept, _ = nms_module._run(b, _rank_order(s), lab, t, None)
    return kept


def sweep_keep(b: np.ndarray, s: np.ndarray, lab: np.ndarray | None, t: float) -> np.ndarray:
    """The numpy sweep's kept indices (the sweep must accept the input)."""
    order = _rank_order(s)
    kept = _nms_sweep.nms_keep(np.ascontiguousarray(b[order]),
                               None if lab is None else lab[order], t)
    assert kept is not None
    return order[kept]


def test_small_inputs_take_the_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    b, s = random_boxes(1000, seed=21)
    lab = np.random.default_rng(0).integers(0, 10, 1000)
    expected = tv_batched(b, s, lab, 0.5)

    def no_kernel() -> None:
        raise AssertionError("the numba kernel was called")

    monkeypatch.setattr(nms_module, "_kernels", no_kernel)
    # a fresh process: the kernel module is not loaded yet (once it is, it serves every size)
    monkeypatch.delitem(sys.modules, "danlu.boxes._nms_kernels", raising=False)
    monkeypatch.setattr(nms_module, "_sweep_calls", [0])
    np.testing.assert_array_equal(batched_nms(b, s, lab, 0.5), expected)
    np.testing.assert_array_equal(nms(b, s, 0.5), tv_nms(b, s, 0.5))
    with pytest.raises(AssertionError, match="kernel"):
        nms(b, s, -0.5)  # a negative threshold is the kernel's


def test_a_process_that_keeps_calling_loads_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    b, s = random_boxes(300, seed=6)
    monkeypatch.delitem(sys.modules, "danlu.boxes._nms_kernels", raising=False)
    monkeypatch.setattr(nms_module, "_sweep_calls", [0])
    used = []
    real = _nms_sweep.nms_keep
    monkeypatch.setattr(_nms_sweep, "nms_keep", lambda *a: used.append(1) or real(*a))
    for _ in range(nms_module.SWEEP_CALLS + 3):
        np.testing.assert_array_equal(nms(b, s, 0.5), tv_nms(b, s, 0.5))
    assert len(used) == nms_module.SWEEP_CALLS  # then the kernel took over


def test_a_loaded_kernel_serves_small_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    b, s = random_boxes(300, seed=5)
    nms_module._kernels()  # loads danlu.boxes._nms_kernels, as an earlier large call would
    monkeypatch.setattr(_nms_sweep, "nms_keep", lambda *a: pytest.fail("sweep was used"))
    np.testing.assert_array_equal(nms(b, s, 0.5), tv_nms(b, s, 0.5))


@pytest.mark.parametrize("n", [2, 50, 2000])
@pytest.mark.parametrize("t", [0.0, 0.5, 1.0])
def test_kernel_matches_torchvision_on_small_inputs(n: int, t: float) -> None:
    b, s = random_boxes(n, seed=n)
    np.testing.assert_array_equal(kernel_keep(b, s, None, t), tv_nms(b, s, t))
    lab = np.random.default_rng(n).integers(0, 3, n)
    np.testing.assert_array_equal(kernel_keep(b, s, lab, t), tv_batched(b, s, lab, t))


def test_sweep_hands_dense_inputs_to_the_kernel() -> None:
    b = np.tile(np.array([[0, 0, 10, 10]], np.float32), (1500, 1))
    b += np.random.default_rng(0).normal(0, 0.5, b.shape).astype(np.float32)
    s = np.random.default_rng(1).random(1500).astype(np.float32)
    assert _nms_sweep.nms_keep(b[_rank_order(s)], None, 0.5) is None  # ~1e6 candidate pairs
    np.testing.assert_array_equal(nms(b, s, 0.5), tv_nms(b, s, 0.5))


@pytest.mark.parametrize("t", [0.0, 0.3, 0.7])
def test_sweep_matches_torchvision_clustered_and_huge(t: float) -> None:
    b, s = clustered_boxes(600, seed=8, clusters=40)
    np.testing.assert_array_equal(sweep_keep(b, s, None, t), tv_nms(b, s, t))
    lab = np.random.default_rng(2).integers(0, 4, 600)
    np.testing.assert_array_equal(sweep_keep(b, s, lab, t), tv_batched(b, s, lab, t))
    # boxes as large as the image among small ones: one strip, wide x ranges
    b, s = random_boxes(300, seed=9)
    b = np.concatenate([b, [[0, 0, 1000, 1000]] * 5, [[-1e6, 3, 1e6, 4]]]).astype(np.float32)
    s = np.concatenate([s, np.linspace(0.2, 0.9, 6)]).astype(np.float32)
    np.testing.assert_array_equal(sweep_keep(b, s, None, t), tv_nms(b, s, t))


# coordinates that exercise every special case: ties, touching edges, huge and non-finite values
special = st.sampled_from([0.0, -0.0, 1.0, 5.0, 5.5, 10.0, 1e30, -1e30, np.inf, -np.inf, np.nan])
coord_any = st.floats(-20, 120, allow_nan=False, width=32) | special


@st.composite
def messy_box_sets(draw, max_n: int = 60):
    n = draw(st.integers(0, max_n))
    b = np.array(draw(st.lists(st.tuples(coord_any, coord_any, coord_any, coord_any),
                               min_size=n, max_size=n)), dtype=np.float64).reshape(n, 4)
    if draw(st.booleans()):  # mostly well-formed boxes, some degenerate ones
        b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
    s = np.array(draw(st.lists(st.sampled_from([0.1, 0.5, 0.9, np.nan]) | st.floats(0, 1),
                               min_size=n, max_size=n)))
    lab = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), dtype=np.int64)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return b.astype(dtype), s.astype(dtype), lab


@settings(max_examples=300, deadline=None)
@given(messy_box_sets(), st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0, np.nan]), st.booleans())
def test_sweep_matches_kernel(data, t: float, labelled: bool) -> None:
    b, s, lab = data
    if len(b) == 0:
        return
    lab = lab if labelled else None
    ours = sweep_keep(b, s, lab, t)
    np.testing.assert_array_equal(ours, kernel_keep(b, s, lab, t))
    public = batched_nms(b, s, lab, t) if labelled else nms(b, s, t)
    np.testing.assert_array_equal(public, ours)


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


def test_polygon_nms_when_the_grid_is_refused() -> None:
    from danlu.boxes._grid import build_grid

    # small rotated boxes and 100 near-copies of the whole scene, which cover every grid cell
    small = rotated_polygons(200, seed=3)
    centre = small.mean(axis=1, keepdims=True)
    small = centre + (small - centre) * 0.2
    j = np.random.default_rng(6).uniform(0, 20, (100, 1))
    big = np.stack([np.hstack([j, j]), np.hstack([300 - j, j]), np.hstack([300 - j, 300 - j]),
                    np.hstack([j, 300 - j])], 1)
    p = np.concatenate([small, big])
    s = np.random.default_rng(5).random(300)
    enclosing = np.ascontiguousarray(np.concatenate([p.min(axis=1), p.max(axis=1)], 1))
    assert not build_grid(enclosing, 0, 300)[0]  # too many registrations: the plain loop
    for t in (0.0, 0.3):
        assert polygon_nms(p, s, t).tolist() == shapely_polygon_nms(p, s, t)


def test_polygon_nms_edge_cases() -> None:
    assert polygon_nms(np.zeros((0, 4, 2)), np.zeros(0), 0.5).tolist() == []
    p = rotated_polygons(5)
    assert polygon_nms(p, np.arange(5.0), -1.0).tolist() == [4]
    k = polygon_nms(torch.from_numpy(p), torch.arange(5.0), 0.5)
    assert isinstance(k, torch.Tensor) and k.dtype == torch.int64
