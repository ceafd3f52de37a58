"""The box IoU family against torchvision.ops, zero-area rules, and properties."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision.ops as tvo
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from danlu.boxes.iou import (
    box_ios,
    box_ios_aligned,
    box_iou,
    box_iou_aligned,
    complete_box_iou,
    complete_box_iou_aligned,
    distance_box_iou,
    distance_box_iou_aligned,
    generalized_box_iou,
    generalized_box_iou_aligned,
)

# (ours pairwise, ours aligned, torchvision oracle)
FAMILY: list[tuple[Callable, Callable, Callable]] = [
    (box_iou, box_iou_aligned, tvo.box_iou),
    (generalized_box_iou, generalized_box_iou_aligned, tvo.generalized_box_iou),
    (distance_box_iou, distance_box_iou_aligned, tvo.distance_box_iou),
    (complete_box_iou, complete_box_iou_aligned, tvo.complete_box_iou),
]
IDS = ["iou", "giou", "diou", "ciou"]


def _boxes(n: int, seed: int, zero_area: bool = False, span: float = 300) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, span, (n, 2))
    wh = rng.uniform(1, 100, (n, 2))
    if zero_area and n:
        wh[rng.random(n) < 0.3, 0] = 0
        wh[rng.random(n) < 0.2, 1] = 0
    return torch.from_numpy(np.concatenate([xy, xy + wh], 1))


@pytest.mark.parametrize(("ours", "aligned", "oracle"), FAMILY, ids=IDS)
@pytest.mark.parametrize(("n", "m"), [(0, 0), (0, 3), (1, 1), (1, 5), (40, 30)])
def test_matches_torchvision_positive_area(ours: Callable, aligned: Callable, oracle: Callable,
                                           n: int, m: int) -> None:
    a, b = _boxes(n, 1), _boxes(m, 2)
    expected = oracle(a, b)
    got = ours(a, b)
    assert isinstance(got, torch.Tensor) and got.shape == (n, m) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    got_np = ours(a.numpy(), b.numpy())
    assert isinstance(got_np, np.ndarray) and got_np.dtype == np.float64
    np.testing.assert_allclose(got_np, expected.numpy(), rtol=0, atol=1e-12)


@pytest.mark.parametrize(("ours", "aligned", "oracle"), FAMILY, ids=IDS)
def test_matches_torchvision_float32(ours: Callable, aligned: Callable, oracle: Callable) -> None:
    a, b = _boxes(30, 3).float(), _boxes(20, 4).float()
    got = ours(a, b)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, oracle(a, b), rtol=0, atol=1e-5)
    got_np = ours(a.numpy(), b.numpy())
    assert got_np.dtype == np.float32
    np.testing.assert_allclose(got_np, oracle(a, b).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("ours", "aligned", "oracle"), FAMILY, ids=IDS)
def test_zero_area_boxes_finite_and_match_where_defined(ours: Callable, aligned: Callable,
                                                        oracle: Callable) -> None:
    a, b = _boxes(50, 5, zero_area=True), _boxes(40, 6, zero_area=True, span=100)
    # identical copies to hit the zero-union and zero-enclosure cases
    a = torch.cat([a, b[:10], torch.tensor([[7.0, 7.0, 7.0, 7.0]], dtype=torch.float64)])
    b = torch.cat([b, torch.tensor([[7.0, 7.0, 7.0, 7.0]], dtype=torch.float64)])
    expected = oracle(a, b)
    got = ours(a, b)
    assert torch.isfinite(got).all()
    defined = torch.isfinite(expected)
    assert (~defined).any()  # the case is exercised
    torch.testing.assert_close(got[defined], expected[defined], rtol=0, atol=1e-12)
    if ours is box_iou:
        assert (got[~defined] == 0).all()


def test_zero_area_fixed_values() -> None:
    point = np.array([[1.0, 1.0, 1.0, 1.0]])
    other_point = np.array([[5.0, 1.0, 5.0, 3.0]])  # a zero-width segment
    assert box_iou(point, point)[0, 0] == 0
    assert box_iou_aligned(point, point)[0] == 0
    assert box_ios(point, point)[0, 0] == 0
    assert generalized_box_iou(point, point)[0, 0] == 0  # zero enclosure too
    assert generalized_box_iou(point, other_point)[0, 0] == -1  # union 0, enclosure > 0
    assert distance_box_iou(point, point)[0, 0] == 0
    assert complete_box_iou(point, point)[0, 0] == 0


@pytest.mark.parametrize(("ours", "aligned", "oracle"), FAMILY, ids=IDS)
def test_aligned_is_the_diagonal(ours: Callable, aligned: Callable, oracle: Callable) -> None:
    a, b = _boxes(25, 7, zero_area=True), _boxes(25, 8, zero_area=True, span=50)
    full = ours(a, b)
    torch.testing.assert_close(aligned(a, b), torch.diagonal(full), rtol=0, atol=1e-12)
    np.testing.assert_allclose(aligned(a.numpy(), b.numpy()), np.diag(full.numpy()), atol=1e-12)
    assert aligned(a[:0], b[:0]).shape == (0,)


def test_batch_dims_like_torchvision() -> None:
    a = torch.stack([_boxes(5, 9), _boxes(5, 10)])  # [2, 5, 4]
    b = torch.stack([_boxes(3, 11), _boxes(3, 12)])  # [2, 3, 4]
    torch.testing.assert_close(box_iou(a, b), tvo.box_iou(a, b))
    assert box_iou(a.numpy(), b.numpy()).shape == (2, 5, 3)
    assert box_iou_aligned(a, a).shape == (2, 5)


def test_dtype_rules_and_mixed_inputs() -> None:
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 0, 3, 2]])
    assert box_iou(a, b).dtype == np.float64  # integers -> float64
    np.testing.assert_allclose(box_iou(a, b), [[1 / 3]])
    t = box_iou(torch.tensor(a), torch.tensor(b))
    assert t.dtype == torch.get_default_dtype()
    half = box_iou(torch.tensor(a, dtype=torch.float16), torch.tensor(b, dtype=torch.float16))
    assert half.dtype == torch.float32  # computed and returned in float32, like torchvision
    mixed = box_iou(a.astype(np.float32), torch.tensor(b, dtype=torch.float64))
    assert isinstance(mixed, torch.Tensor) and mixed.dtype == torch.float64
    with pytest.raises(ValueError):
        box_iou(np.zeros((2, 5)), np.zeros((2, 4)))


def test_box_ios_fixed() -> None:
    big = np.array([[0.0, 0.0, 4.0, 4.0]])
    small = np.array([[1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 5.0, 5.0], [10.0, 10, 11, 11],
                      [2.0, 2.0, 2.0, 3.0]])
    np.testing.assert_allclose(box_ios(big, small), [[1.0, 0.25, 0.0, 0.0]])
    np.testing.assert_allclose(box_ios(small, big), [[1.0], [0.25], [0.0], [0.0]])
    np.testing.assert_allclose(box_ios_aligned(np.repeat(big, 4, 0), small), [1.0, 0.25, 0, 0])


def test_box_ios_against_definition() -> None:
    a, b = _boxes(30, 13, zero_area=True), _boxes(20, 14, zero_area=True)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    smaller = torch.min(tvo.box_area(a)[:, None], tvo.box_area(b)[None, :])
    expected = torch.where(smaller > 0, inter / smaller.clamp(min=1e-300), torch.zeros(()))
    torch.testing.assert_close(box_ios(a, b), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fn", [generalized_box_iou, distance_box_iou, complete_box_iou])
def test_gradients_finite_for_zero_area_boxes(fn: Callable) -> None:
    a = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 0.0], [0, 0, 3, 3]],
                     requires_grad=True)
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    fn(a, b).sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


_coord = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def _xyxy(draw: st.DrawFn, n: int = 4, min_size: float = 0.0) -> np.ndarray:
    xy = draw(arrays(np.float64, (n, 2), elements=_coord))
    wh = draw(arrays(np.float64, (n, 2), elements=st.floats(min_size, 500)))
    return np.concatenate([xy, xy + wh], 1)


@settings(max_examples=150, deadline=None)
@given(_xyxy(), _xyxy())
def test_properties(a: np.ndarray, b: np.ndarray) -> None:
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou, box_iou(b, a).T, rtol=0, atol=1e-12)
    assert ((iou >= 0) & (iou <= 1)).all()
    giou = generalized_box_iou(a, b)
    np.testing.assert_allclose(giou, generalized_box_iou(b, a).T, rtol=0, atol=1e-12)
    assert ((giou >= -1 - 1e-12) & (giou <= iou + 1e-12)).all()
    diou = distance_box_iou(a, b)
    assert ((diou >= -1 - 1e-12) & (diou <= iou + 1e-12)).all()
    ciou = complete_box_iou(a, b)
    assert np.isfinite(ciou).all() and (ciou <= diou + 1e-12).all()
    ios = box_ios(a, b)
    np.testing.assert_allclose(ios, box_ios(b, a).T, rtol=0, atol=1e-12)
    assert ((ios >= iou - 1e-12) & (ios <= 1 + 1e-12)).all()


@settings(max_examples=100, deadline=None)
@given(_xyxy(min_size=0.01))
def test_self_iou_is_one(a: np.ndarray) -> None:
    np.testing.assert_allclose(np.diag(box_iou(a, a)), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(box_iou_aligned(a, a), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(generalized_box_iou_aligned(a, a), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(complete_box_iou_aligned(a, a), 1.0, rtol=0, atol=1e-9)
    np.testing.assert_allclose(box_ios_aligned(a, a), 1.0, rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_stays_on_device() -> None:
    a, b = _boxes(10, 15).cuda(), _boxes(7, 16).cuda()
    for ours, aligned, oracle in FAMILY:
        got = ours(a, b)
        assert got.device == a.device
        torch.testing.assert_close(got, oracle(a, b), rtol=0, atol=1e-12)
        assert aligned(a, a).device == a.device
