"""Exact polygon IoU against shapely, edge cases, and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.boxes.convert import cxcywha_to_polygon
from danlu.boxes.polygon import (
    polygon_area,
    polygon_iou,
    polygon_iou_aligned,
    polygon_iou_pairs,
    polygon_signed_area,
)

SQUARE = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])


def _shapely_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU matrix by shapely (the oracle); 0 where the union is 0."""
    pa, pb = shapely.polygons(a), shapely.polygons(b)
    inter = shapely.area(shapely.intersection(pa[:, None], pb[None, :]))
    union = shapely.area(pa)[:, None] + shapely.area(pb)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _rects(n: int, rng: np.random.Generator, span: float = 300) -> np.ndarray:
    boxes = np.stack([rng.uniform(0, span, n), rng.uniform(0, span, n), rng.uniform(5, 100, n),
                      rng.uniform(5, 100, n), rng.uniform(-math.pi, math.pi, n)], 1)
    return cxcywha_to_polygon(boxes)


def _convex_quads(n: int, rng: np.random.Generator, span: float = 300) -> np.ndarray:
    """Convex quadrilaterals: 4 sorted points on the unit circle under a random affine map."""
    t = np.sort(rng.uniform(0, 2 * math.pi, (n, 4)), axis=1)
    pts = np.stack([np.cos(t), np.sin(t)], -1)
    affine = rng.normal(0, 30, (n, 2, 2))
    return np.einsum("nij,nkj->nki", affine, pts) + rng.uniform(0, span, (n, 1, 2))


def _flip_some(p: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reverse the vertex order of about half of the polygons."""
    p = p.copy()
    rev = rng.random(len(p)) < 0.5
    p[rev] = p[rev, ::-1]
    return p


def test_polygon_area_matches_shapely_both_orientations() -> None:
    rng = np.random.default_rng(0)
    quads = _flip_some(_convex_quads(100, rng), rng)
    np.testing.assert_allclose(polygon_area(quads), shapely.area(shapely.polygons(quads)),
                               rtol=1e-12)
    signed = polygon_signed_area(quads)
    assert (signed < 0).any() and (signed > 0).any()
    t = polygon_area(torch.from_numpy(quads).float())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (100,)
    assert polygon_area(np.array([[[0, 0], [4, 0], [4, 3], [0, 3]]]))[0] == 12


@pytest.mark.parametrize("kind", ["rects", "quads"])
@pytest.mark.parametrize("span", [80.0, 400.0])
def test_matches_shapely_random(kind: str, span: float) -> None:
    rng = np.random.default_rng(1 if kind == "rects" else 2)
    make = _rects if kind == "rects" else _convex_quads
    a = _flip_some(make(60, rng, span), rng)
    b = _flip_some(make(50, rng, span), rng)
    expected = _shapely_iou(a, b)
    got = polygon_iou(a, b)
    assert got.shape == (60, 50) and got.dtype == np.float64
    assert (expected > 0).mean() > (0.3 if span < 100 else 0.005)  # overlaps are exercised
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(polygon_iou_aligned(a[:50], b), np.diag(expected[:50]), atol=1e-6)


def test_matches_shapely_far_from_origin() -> None:
    rng = np.random.default_rng(3)
    a = _rects(40, rng, 60) + 1e5
    b = _convex_quads(40, rng, 60) + 1e5
    np.testing.assert_allclose(polygon_iou(a, b), _shapely_iou(a, b), rtol=0, atol=1e-6)


def test_identical_disjoint_touching_nested() -> None:
    sq = SQUARE[None]
    cases = {
        "identical": (SQUARE, 1.0),
        "reversed": (SQUARE[::-1], 1.0),
        "rotated start": (np.roll(SQUARE, 1, axis=0), 1.0),
        "disjoint": (SQUARE + 10, 0.0),
        "shared edge": (SQUARE + [2.0, 0.0], 0.0),
        "shared corner": (SQUARE + [2.0, 2.0], 0.0),
        "nested": (SQUARE * 0.5 + 0.5, 0.25),
        "half": (SQUARE + [1.0, 0.0], 1 / 3),
        "diamond inside": (np.array([[1.0, 0.0], [2.0, 1.0], [1.0, 2.0], [0.0, 1.0]]), 0.5),
    }
    others = np.stack([c[0] for c in cases.values()])
    expected = np.array([c[1] for c in cases.values()])
    got = polygon_iou(sq, others)[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12, err_msg=str(list(cases)))
    np.testing.assert_allclose(polygon_iou(others, sq)[:, 0], expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(polygon_iou_aligned(np.repeat(sq, len(others), 0), others),
                               expected, rtol=0, atol=1e-12)
    assert polygon_iou(sq, sq)[0, 0] == 1.0


def test_degenerate_polygons_give_zero() -> None:
    degenerate = np.array([
        [[0.0, 0.0], [2.0, 2.0], [1.0, 1.0], [0.5, 0.5]],  # collinear
        [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]],  # a point
        [[0.0, 1.0], [2.0, 1.0], [2.0, 1.0], [0.0, 1.0]],  # a segment crossing the square
    ])
    out = polygon_iou(degenerate, np.concatenate([SQUARE[None], degenerate]))
    assert np.isfinite(out).all() and (out == 0).all()
    assert (polygon_iou_aligned(degenerate, degenerate) == 0).all()


def test_zero_and_one_polygons() -> None:
    empty = np.zeros((0, 4, 2))
    assert polygon_iou(empty, SQUARE[None]).shape == (0, 1)
    assert polygon_iou(SQUARE[None], empty).shape == (1, 0)
    assert polygon_iou(empty, empty).shape == (0, 0)
    assert polygon_iou_aligned(empty, empty).shape == (0,)
    assert polygon_iou(SQUARE[None], SQUARE[None]).shape == (1, 1)


def test_torch_in_torch_out_and_dtypes() -> None:
    rng = np.random.default_rng(4)
    a, b = _rects(20, rng, 100), _rects(10, rng, 100)
    expected = _shapely_iou(a, b)
    t = polygon_iou(torch.from_numpy(a).float(), torch.from_numpy(b).float())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (20, 10)
    np.testing.assert_allclose(t.numpy(), expected, rtol=0, atol=1e-4)  # float32 inputs
    t64 = polygon_iou_aligned(torch.from_numpy(a[:10]), torch.from_numpy(b))
    assert t64.dtype == torch.float64
    np.testing.assert_allclose(t64.numpy(), np.diag(expected), atol=1e-6)
    assert polygon_iou(a.astype(np.float32), b.astype(np.float32)).dtype == np.float32
    assert polygon_iou(SQUARE[None].astype(int), SQUARE[None].astype(int)).dtype == np.float64


def test_inputs_not_modified_and_bad_shapes() -> None:
    a = SQUARE[::-1][None].copy()
    before = a.copy()
    polygon_iou(a, a)
    np.testing.assert_array_equal(a, before)
    with pytest.raises(ValueError):
        polygon_iou(np.zeros((2, 3, 2)), np.zeros((2, 4, 2)))
    with pytest.raises(ValueError):
        polygon_iou_aligned(np.zeros((2, 4, 2)), np.zeros((3, 4, 2)))


@pytest.mark.parametrize("kind", ["rects", "quads"])
def test_pairs_match_shapely_and_aligned(kind: str) -> None:
    rng = np.random.default_rng(6 if kind == "rects" else 7)
    make = _rects if kind == "rects" else _convex_quads
    a = _flip_some(make(40, rng, 120), rng)
    b = _flip_some(make(30, rng, 120), rng)
    i = rng.integers(0, 40, 500)
    j = rng.integers(0, 30, 500)
    got = polygon_iou_pairs(a, b, i, j)
    assert got.shape == (500,) and got.dtype == np.float64
    expected = _shapely_iou(a, b)[i, j]
    assert (expected > 0).mean() > 0.05
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    # The same numbers as the aligned function on the gathered pairs, bit for bit.
    assert np.array_equal(got, polygon_iou_aligned(a[i], b[j]))
    np.testing.assert_allclose(polygon_iou_pairs(b, a, j, i), got, rtol=0, atol=1e-12)


def test_pairs_edge_cases_and_types() -> None:
    sq = SQUARE[None]
    others = np.stack([SQUARE, SQUARE[::-1], SQUARE + 10, SQUARE + [2.0, 0.0],
                       SQUARE * 0.5 + 0.5, SQUARE + [1.0, 0.0]])
    got = polygon_iou_pairs(sq, others, np.zeros(6, int), np.arange(6))
    np.testing.assert_allclose(got, [1.0, 1.0, 0.0, 0.0, 0.25, 1 / 3], rtol=0, atol=1e-12)
    # Repeated indices, both orders, degenerate polygons.
    degenerate = np.array([[[0.0, 0.0], [2.0, 2.0], [1.0, 1.0], [0.5, 0.5]]])
    both = np.concatenate([others, degenerate])
    out = polygon_iou_pairs(both, both, [6, 6, 0, 5, 5], [0, 6, 6, 0, 0])
    np.testing.assert_allclose(out, [0.0, 0.0, 0.0, 1 / 3, 1 / 3], rtol=0, atol=1e-12)
    # Empty pair lists, and empty polygon sets with no pairs.
    assert polygon_iou_pairs(sq, others, [], []).shape == (0,)
    assert polygon_iou_pairs(np.zeros((0, 4, 2)), sq, np.zeros(0, int), []).shape == (0,)
    # float32 in, float32 out; integers in, float64 out; inputs not modified.
    a = SQUARE[::-1][None].copy()
    before = a.copy()
    assert polygon_iou_pairs(a.astype(np.float32), a.astype(np.float32), [0], [0]).dtype == \
        np.float32
    assert polygon_iou_pairs(a.astype(int), a.astype(int), [0], [0]).dtype == np.float64
    polygon_iou_pairs(a, a, [0], [0])
    np.testing.assert_array_equal(a, before)
    # torch in, torch out (indices may be tensors too).
    t = polygon_iou_pairs(torch.from_numpy(others).float(), torch.from_numpy(sq).float(),
                          torch.arange(6), torch.zeros(6, dtype=torch.long))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), [1.0, 1.0, 0.0, 0.0, 0.25, 1 / 3], atol=1e-6)


def test_pairs_bad_input() -> None:
    sq = SQUARE[None]
    with pytest.raises(ValueError):
        polygon_iou_pairs(sq, sq, [0, 0], [0])  # lengths differ
    with pytest.raises(ValueError):
        polygon_iou_pairs(sq, sq, [1], [0])  # out of range
    with pytest.raises(ValueError):
        polygon_iou_pairs(sq, sq, [-1], [0])  # negative
    with pytest.raises(ValueError):
        polygon_iou_pairs(sq, sq, [0.0], [0])  # not integers
    with pytest.raises(ValueError):
        polygon_iou_pairs(sq, sq, [[0]], [[0]])  # not 1-D
    with pytest.raises(ValueError):
        polygon_iou_pairs(np.zeros((1, 3, 2)), sq, [0], [0])


_rect = st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0.5, 60), st.floats(0.5, 60),
                  st.floats(-math.pi, math.pi))


@settings(max_examples=150, deadline=None)
@given(st.lists(_rect, min_size=1, max_size=5), st.lists(_rect, min_size=1, max_size=5),
       st.booleans())
def test_properties(ra: list, rb: list, flip: bool) -> None:
    a, b = cxcywha_to_polygon(np.array(ra)), cxcywha_to_polygon(np.array(rb))
    if flip:
        b = b[:, ::-1]
    iou = polygon_iou(a, b)
    np.testing.assert_allclose(iou, polygon_iou(b, a).T, rtol=0, atol=1e-12)
    assert ((iou >= 0) & (iou <= 1)).all()
    np.testing.assert_allclose(polygon_iou_aligned(a, a), 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.diag(polygon_iou(b, b)), 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(iou, _shapely_iou(a, b), rtol=0, atol=1e-6)
    i, j = np.divmod(np.arange(len(a) * len(b)), len(b))
    assert np.array_equal(polygon_iou_pairs(a, b, i, j), iou[i, j])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_round_trip() -> None:
    rng = np.random.default_rng(5)
    a, b = _rects(8, rng, 50), _rects(6, rng, 50)
    got = polygon_iou(torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda())
    assert got.device.type == "cuda"
    np.testing.assert_allclose(got.cpu().numpy(), _shapely_iou(a, b), rtol=0, atol=1e-6)
    area = polygon_area(torch.from_numpy(a).cuda())
    assert area.device.type == "cuda"
