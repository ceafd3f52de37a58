"""Box conversions against torchvision.ops and shapely, plus round-trip properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
import torch
import torchvision.ops as tvo
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from danlu.boxes.convert import (
    box_area,
    box_convert,
    clip_boxes,
    cxcywha_to_polygon,
    from_yolo,
    polygon_to_cxcywha,
    polygon_to_xyxy,
    scale_boxes,
    to_yolo,
    translate_boxes,
)
from danlu.boxes.polygon import polygon_signed_area

FORMATS = ("xyxy", "xywh", "cxcywh")


def _random_xyxy(n: int, seed: int = 0, zero_area: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-50, 500, (n, 2))
    wh = rng.uniform(0, 200, (n, 2))
    if zero_area and n:
        wh[rng.random(n) < 0.2, 0] = 0  # some zero-width boxes
        wh[rng.random(n) < 0.1] = 0  # some point boxes
    return np.concatenate([xy, xy + wh], 1)


def _random_rects(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(0, 1000, n), rng.uniform(0, 1000, n), rng.uniform(1, 200, n),
                     rng.uniform(1, 200, n), rng.uniform(-math.pi, math.pi, n)], 1)


@pytest.mark.parametrize("n", [0, 1, 37])
@pytest.mark.parametrize("in_fmt", FORMATS)
@pytest.mark.parametrize("out_fmt", FORMATS)
def test_box_convert_matches_torchvision(n: int, in_fmt: str, out_fmt: str) -> None:
    xyxy = torch.from_numpy(_random_xyxy(n))
    src = tvo.box_convert(xyxy, "xyxy", in_fmt)
    expected = tvo.box_convert(src, in_fmt, out_fmt)
    got_t = box_convert(src, in_fmt, out_fmt)
    got_n = box_convert(src.numpy(), in_fmt, out_fmt)
    assert isinstance(got_t, torch.Tensor) and isinstance(got_n, np.ndarray)
    assert got_t.shape == got_n.shape == (n, 4)
    torch.testing.assert_close(got_t, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got_n, expected.numpy(), rtol=0, atol=1e-9)


def test_box_convert_fixed() -> None:
    xyxy = np.array([[10.0, 20.0, 30.0, 60.0]])
    np.testing.assert_array_equal(box_convert(xyxy, "xyxy", "xywh"), [[10, 20, 20, 40]])
    np.testing.assert_array_equal(box_convert(xyxy, "xyxy", "cxcywh"), [[20, 40, 20, 40]])
    np.testing.assert_array_equal(box_convert([[20, 40, 20, 40]], "cxcywh", "xyxy"), xyxy)


def test_box_convert_same_format_copies_and_rejects_unknown() -> None:
    boxes = np.array([[1.0, 2.0, 3.0, 4.0]])
    out = box_convert(boxes, "xyxy", "xyxy")
    out[0, 0] = 99
    assert boxes[0, 0] == 1
    with pytest.raises(ValueError, match="unknown box format"):
        box_convert(boxes, "xyxy", "yolo")
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        box_convert(np.zeros((3, 5)), "xyxy", "xywh")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_and_batch_dims_preserved_torch(dtype: torch.dtype) -> None:
    boxes = torch.tensor([[[0, 0, 4, 2], [1, 1, 3, 3]]], dtype=dtype)  # [1, 2, 4]
    for out in (box_convert(boxes, "xyxy", "cxcywh"), to_yolo(boxes, 8, 4),
                scale_boxes(boxes, 2, 3), translate_boxes(boxes, 1, -1), clip_boxes(boxes, 3, 3)):
        assert out.dtype == dtype and out.shape == (1, 2, 4)
    assert box_area(boxes).dtype == dtype and box_area(boxes).shape == (1, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved_numpy(dtype: type) -> None:
    boxes = np.array([[0, 0, 4, 2]], dtype=dtype)
    for out in (box_convert(boxes, "xyxy", "xywh"), from_yolo(boxes / 10, 8, 4),
                scale_boxes(boxes, 0.5, 2), translate_boxes(boxes, 0.5, 2)):
        assert out.dtype == dtype


def test_integer_inputs() -> None:
    ints = np.array([[0, 0, 5, 3]])
    assert box_convert(ints, "xyxy", "cxcywh").dtype == np.float64
    np.testing.assert_array_equal(box_convert(ints, "xyxy", "cxcywh"), [[2.5, 1.5, 5, 3]])
    t = torch.tensor([[0, 0, 5, 3]])
    assert box_convert(t, "xyxy", "cxcywh").dtype == torch.get_default_dtype()
    # area and clip keep integer dtypes, like torchvision
    assert box_area(t).dtype == torch.int64 and box_area(ints).dtype == ints.dtype
    assert clip_boxes(t, 4, 2).dtype == torch.int64


def test_yolo_fixed() -> None:
    xyxy = np.array([[0.0, 0.0, 50.0, 20.0], [50.0, 20.0, 100.0, 40.0]])
    yolo = to_yolo(xyxy, 100, 40)
    np.testing.assert_allclose(yolo, [[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])
    np.testing.assert_allclose(from_yolo(yolo, 100, 40), xyxy)
    with pytest.raises(ValueError):
        to_yolo(xyxy, 0, 40)


@pytest.mark.parametrize("n", [0, 1, 50])
def test_clip_matches_torchvision(n: int) -> None:
    boxes = torch.from_numpy(_random_xyxy(n, seed=3))
    expected = tvo.clip_boxes_to_image(boxes, (300, 400))  # (height, width)
    torch.testing.assert_close(clip_boxes(boxes, 400, 300), expected)
    np.testing.assert_array_equal(clip_boxes(boxes.numpy(), 400, 300), expected.numpy())


@pytest.mark.parametrize("n", [0, 1, 50])
def test_area_matches_torchvision(n: int) -> None:
    boxes = torch.from_numpy(_random_xyxy(n, seed=4))  # includes zero-area boxes
    expected = tvo.box_area(boxes)
    torch.testing.assert_close(box_area(boxes), expected)
    np.testing.assert_allclose(box_area(boxes.numpy()), expected.numpy())
    if n > 1:
        assert (box_area(boxes) == 0).any()


def test_area_of_malformed_box_is_zero() -> None:
    np.testing.assert_array_equal(box_area(np.array([[10.0, 0, 0, 10], [0, 5, 5, 0]])), [0, 0])


def test_scale_translate_fixed() -> None:
    boxes = np.array([[10.0, 20.0, 30.0, 40.0]])
    np.testing.assert_array_equal(scale_boxes(boxes, 0.5, 2), [[5, 40, 15, 80]])
    np.testing.assert_array_equal(translate_boxes(boxes, -10, 5), [[0, 25, 20, 45]])
    with pytest.raises(ValueError):
        scale_boxes(boxes, -1, 1)


def test_cxcywha_to_polygon_orientation() -> None:
    # angle 0: TL, TR, BR, BL (clockwise on screen), positive shoelace area
    poly = cxcywha_to_polygon(np.array([[5.0, 5.0, 4.0, 2.0, 0.0]]))
    np.testing.assert_allclose(poly[0], [[3, 4], [7, 4], [7, 6], [3, 6]])
    assert polygon_signed_area(poly)[0] == pytest.approx(8.0)
    # +pi/2 turns the width axis from +x to +y (down the screen): clockwise on screen
    poly = cxcywha_to_polygon(np.array([[5.0, 5.0, 4.0, 2.0, math.pi / 2]]))
    np.testing.assert_allclose(poly[0], [[6, 3], [6, 7], [4, 7], [4, 3]], atol=1e-12)
    assert polygon_signed_area(poly)[0] == pytest.approx(8.0)


def test_polygon_cxcywha_round_trip_random_rectangles() -> None:
    boxes = _random_rects(200, seed=5)
    poly = cxcywha_to_polygon(boxes)
    back = polygon_to_cxcywha(poly)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cxcywha_to_polygon(back), poly, rtol=0, atol=1e-9)
    # reversed vertex order: the same rectangle, vertices in DOTA order from another start
    rev = polygon_to_cxcywha(poly[:, ::-1])
    rev_poly = cxcywha_to_polygon(rev)
    assert (polygon_signed_area(rev_poly) > 0).all()
    a, b = shapely.polygons(poly), shapely.polygons(rev_poly)
    np.testing.assert_allclose(shapely.area(shapely.symmetric_difference(a, b)), 0, atol=1e-6)


def test_polygon_to_cxcywha_torch_device_and_dtype() -> None:
    boxes = torch.tensor(_random_rects(20, seed=6), dtype=torch.float32)
    poly = cxcywha_to_polygon(boxes)
    assert poly.shape == (20, 4, 2) and poly.dtype == torch.float32
    back = polygon_to_cxcywha(poly)
    assert isinstance(back, torch.Tensor) and back.dtype == torch.float32
    torch.testing.assert_close(back, boxes, rtol=0, atol=2e-3)


def _random_quads(n: int, seed: int) -> np.ndarray:
    """Convex (points on an ellipse, then a random affine map) and non-convex quadrilaterals."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 2 * math.pi, (n, 4)), axis=1)
    pts = np.stack([np.cos(t), np.sin(t)], -1)
    affine = rng.normal(0, 50, (n, 2, 2))
    quads = np.einsum("nij,nkj->nki", affine, pts) + rng.uniform(0, 1000, (n, 1, 2))
    quads[: n // 4] = rng.uniform(0, 100, (n // 4, 4, 2))  # arbitrary, possibly non-convex
    return quads


def test_polygon_to_cxcywha_is_minimum_area_rectangle() -> None:
    quads = _random_quads(300, seed=7)
    rect = cxcywha_to_polygon(polygon_to_cxcywha(quads))
    ours = shapely.polygons(rect)
    theirs = shapely.oriented_envelope(shapely.multipoints(quads))
    np.testing.assert_allclose(shapely.area(ours), shapely.area(theirs), rtol=1e-9, atol=1e-6)
    # ... and it encloses every vertex
    hull = shapely.convex_hull(shapely.multipoints(quads))
    np.testing.assert_allclose(shapely.area(shapely.difference(hull, ours)), 0, atol=1e-6)


def test_polygon_to_cxcywha_degenerate() -> None:
    line = np.array([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    out = polygon_to_cxcywha(line)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :4], [1.5, 1.5, 3 * math.sqrt(2), 0], atol=1e-12)
    point = np.full((1, 4, 2), 7.0)
    np.testing.assert_array_equal(polygon_to_cxcywha(point), [[7, 7, 0, 0, 0]])
    with pytest.raises(ValueError):
        polygon_to_cxcywha(np.zeros((2, 3, 2)))


def test_polygon_to_xyxy_matches_shapely_bounds() -> None:
    quads = _random_quads(50, seed=8)
    np.testing.assert_allclose(polygon_to_xyxy(quads), shapely.bounds(shapely.polygons(quads)))
    t = polygon_to_xyxy(torch.from_numpy(quads))
    assert isinstance(t, torch.Tensor) and t.shape == (50, 4)
    assert polygon_to_xyxy(np.zeros((0, 4, 2))).shape == (0, 4)


_coord = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
_size = st.floats(0, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def _xyxy(draw: st.DrawFn) -> np.ndarray:
    xy = draw(arrays(np.float64, (5, 2), elements=_coord))
    wh = draw(arrays(np.float64, (5, 2), elements=_size))
    return np.concatenate([xy, xy + wh], 1)


@settings(max_examples=100, deadline=None)
@given(_xyxy(), st.sampled_from(FORMATS), st.booleans())
def test_round_trip_xyxy_through_any_format(boxes: np.ndarray, fmt: str, as_torch: bool) -> None:
    src = torch.from_numpy(boxes) if as_torch else boxes
    back = box_convert(box_convert(src, "xyxy", fmt), fmt, "xyxy")
    np.testing.assert_allclose(np.asarray(back), boxes, rtol=0, atol=1e-8)


@settings(max_examples=100, deadline=None)
@given(_xyxy(), st.floats(1, 1e4), st.floats(1, 1e4))
def test_round_trip_yolo(boxes: np.ndarray, width: float, height: float) -> None:
    back = from_yolo(to_yolo(boxes, width, height), width, height)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-7)


@settings(max_examples=100, deadline=None)
@given(_xyxy(), st.floats(0.01, 100), st.floats(0.01, 100), _coord, _coord)
def test_round_trip_scale_translate(boxes: np.ndarray, sx: float, sy: float, dx: float,
                                    dy: float) -> None:
    back = scale_boxes(scale_boxes(boxes, sx, sy), 1 / sx, 1 / sy)
    np.testing.assert_allclose(back, boxes, rtol=1e-12, atol=1e-9)
    back = translate_boxes(translate_boxes(boxes, dx, dy), -dx, -dy)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-8)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e4, 1e4), st.floats(-1e4, 1e4), st.floats(0.5, 1e3), st.floats(0.5, 1e3),
       st.floats(-math.pi * 0.999999, math.pi))
def test_round_trip_rectangle_polygon(cx: float, cy: float, w: float, h: float, a: float) -> None:
    box = np.array([[cx, cy, w, h, a]])
    poly = cxcywha_to_polygon(box)
    back = polygon_to_cxcywha(poly)
    # compare as polygons: also checks the start vertex and the order
    np.testing.assert_allclose(cxcywha_to_polygon(back), poly, rtol=0, atol=1e-7)
    np.testing.assert_allclose(back[:, :4], box[:, :4], rtol=0, atol=1e-7)
