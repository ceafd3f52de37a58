"""The IoU family for axis-aligned ``xyxy`` boxes: IoU, GIoU, DIoU, CIoU and IoS.

Every measure comes in two forms with one naming scheme:

- ``box_iou(a [..., N, 4], b [..., M, 4]) -> [..., N, M]``: every box of ``a`` against every
  box of ``b`` (pairwise matrix, as in torchvision.ops).
- ``box_iou_aligned(a [..., K, 4], b [..., K, 4]) -> [..., K]``: box ``k`` of ``a`` against box
  ``k`` of ``b`` only (element-wise; the shapes broadcast like numpy's).

Boxes are absolute ``xyxy``, continuous (area ``(x2 - x1) * (y2 - y1)``, no ``+1``). Inputs may be
numpy arrays or torch tensors (any device; if one argument is a tensor the other is moved to its
device). The result has the input's type and float dtype; integer inputs give the default float
dtype (``float64`` for numpy, ``torch.get_default_dtype()`` for torch), and half precision is
computed and returned in ``float32``, like torchvision. Torch inputs keep their autograd graph.

**Zero areas.** Where a ratio's denominator is 0 the ratio is defined as 0, never NaN: the IoU of
two zero-area boxes is 0 (torchvision gives NaN), and a malformed box (``x2 < x1``) counts as
area 0. Where torchvision's result is finite ours is the same.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from danlu.boxes._arrays import _is_tensor, _torch
from danlu.boxes.convert import Array, _as_array, _check_last, _unbind, _xp, box_area

__all__ = [
    "box_iou",
    "box_iou_aligned",
    "generalized_box_iou",
    "generalized_box_iou_aligned",
    "distance_box_iou",
    "distance_box_iou_aligned",
    "complete_box_iou",
    "complete_box_iou_aligned",
    "box_ios",
    "box_ios_aligned",
]

# torchvision's default; keeps DIoU/CIoU finite when both boxes are the same point.
_EPS = 1e-7


def _prepare(a: Any, b: Any) -> tuple[Any, Any]:
    """Both arguments as arrays of one library, device and float dtype."""
    a, b = _as_array(a), _as_array(b)
    if _is_tensor(a) or _is_tensor(b):
        torch = _torch()
        ref = a if _is_tensor(a) else b
        a = torch.as_tensor(a, device=ref.device)
        b = torch.as_tensor(b, device=ref.device)
        dtype = torch.promote_types(a.dtype, b.dtype)
        if not dtype.is_floating_point:
            dtype = torch.get_default_dtype()
        elif dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
        a, b = a.to(dtype), b.to(dtype)
    else:
        dtype = np.result_type(a.dtype, b.dtype)
        if not np.issubdtype(dtype, np.floating):
            dtype = np.dtype(np.float64)
        elif dtype == np.float16:
            dtype = np.dtype(np.float32)
        a, b = a.astype(dtype, copy=False), b.astype(dtype, copy=False)
    _check_last(a, 4, "boxes1")
    _check_last(b, 4, "boxes2")
    return a, b


def _pairwise(a: Any, b: Any) -> tuple[Any, Any]:
    """Broadcastable views ``[..., N, 1, 4]`` and ``[..., 1, M, 4]``."""
    a, b = _prepare(a, b)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"pairwise IoU needs [..., N, 4] and [..., M, 4] boxes, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    return a[..., :, None, :], b[..., None, :, :]


def _div0(num: Any, den: Any) -> Any:
    """``num / den`` where ``den > 0``, else 0.

    The denominator is replaced before dividing (not only the result afterwards) so no inf/NaN is
    ever formed, which would otherwise leak NaN into torch gradients.
    """
    xp = _xp(den)
    pos = den > 0
    return xp.where(pos, num / xp.where(pos, den, xp.ones_like(den)), xp.zeros_like(num))


def _inter_union(a: Any, b: Any) -> tuple[Any, Any, Any, Any]:
    """Intersection area, union area and the two areas of broadcast boxes ``[..., 4]``."""
    xp = _xp(a)
    ax1, ay1, ax2, ay2 = _unbind(a)
    bx1, by1, bx2, by2 = _unbind(b)
    iw = (xp.minimum(ax2, bx2) - xp.maximum(ax1, bx1)).clip(min=0)
    ih = (xp.minimum(ay2, by2) - xp.maximum(ay1, by1)).clip(min=0)
    inter = iw * ih
    area_a, area_b = box_area(a), box_area(b)
    return inter, area_a + area_b - inter, area_a, area_b


def _iou(a: Any, b: Any) -> Any:
    inter, union, _, _ = _inter_union(a, b)
    return _div0(inter, union)


def _enclosing_wh(a: Any, b: Any) -> tuple[Any, Any]:
    """Width and height of the smallest box enclosing both."""
    xp = _xp(a)
    ax1, ay1, ax2, ay2 = _unbind(a)
    bx1, by1, bx2, by2 = _unbind(b)
    cw = (xp.maximum(ax2, bx2) - xp.minimum(ax1, bx1)).clip(min=0)
    ch = (xp.maximum(ay2, by2) - xp.minimum(ay1, by1)).clip(min=0)
    return cw, ch


def _giou(a: Any, b: Any) -> Any:
    inter, union, _, _ = _inter_union(a, b)
    cw, ch = _enclosing_wh(a, b)
    enclose = cw * ch
    return _div0(inter, union) - _div0(enclose - union, enclose)


def _diou_iou(a: Any, b: Any, eps: float) -> tuple[Any, Any]:
    iou = _iou(a, b)
    cw, ch = _enclosing_wh(a, b)
    diag2 = cw * cw + ch * ch + eps
    ax1, ay1, ax2, ay2 = _unbind(a)
    bx1, by1, bx2, by2 = _unbind(b)
    dx = (ax1 + ax2) / 2 - (bx1 + bx2) / 2
    dy = (ay1 + ay2) / 2 - (by1 + by2) / 2
    return iou - (dx * dx + dy * dy) / diag2, iou


def _ciou(a: Any, b: Any, eps: float) -> Any:
    xp = _xp(a)
    diou, iou = _diou_iou(a, b, eps)
    ax1, ay1, ax2, ay2 = _unbind(a)
    bx1, by1, bx2, by2 = _unbind(b)
    # atan2(w, h) equals torchvision's atan(w / h) for h > 0 and for h == 0 < w, and is 0
    # instead of NaN for a point box.
    wa, ha = (ax2 - ax1).clip(min=0), (ay2 - ay1).clip(min=0)
    wb, hb = (bx2 - bx1).clip(min=0), (by2 - by1).clip(min=0)
    v = (4 / math.pi**2) * (xp.arctan2(wa, ha) - xp.arctan2(wb, hb)) ** 2
    alpha = v / (1 - iou + v + eps)
    if _is_tensor(alpha):
        # As in the CIoU paper and torchvision: alpha is a weight, not differentiated through.
        alpha = alpha.detach()
    return diou - alpha * v


def _ios(a: Any, b: Any) -> Any:
    xp = _xp(a)
    inter, _, area_a, area_b = _inter_union(a, b)
    return _div0(inter, xp.minimum(area_a, area_b))


def box_iou(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise IoU of ``xyxy`` boxes: ``[..., N, 4]`` x ``[..., M, 4]`` -> ``[..., N, M]``.

    ``inter / union``, in ``[0, 1]``; 0 where the union area is 0 (e.g. two zero-area boxes),
    where torchvision gives NaN.

    >>> box_iou(np.array([[0.0, 0.0, 2.0, 2.0]]), np.array([[1.0, 0.0, 3.0, 2.0], [5, 5, 6, 6]]))
    array([[0.33333333, 0.        ]])
    """
    return _iou(*_pairwise(boxes1, boxes2))


def box_iou_aligned(boxes1: Array, boxes2: Array) -> Array:
    """Element-wise IoU of ``xyxy`` boxes: ``[..., K, 4]`` and ``[..., K, 4]`` -> ``[..., K]``.

    The diagonal of :func:`box_iou` without forming the matrix; zero union gives 0.
    """
    return _iou(*_prepare(boxes1, boxes2))


def generalized_box_iou(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise generalized IoU (GIoU) ``[..., N, 4]`` x ``[..., M, 4]`` -> ``[..., N, M]``.

    ``IoU - (C - union) / C`` with ``C`` the area of the smallest box enclosing both; in
    ``[-1, 1]``. Each ratio is 0 where its denominator is 0, so two identical point boxes give 0
    and two distinct point boxes give -1 (torchvision: NaN for both).
    """
    return _giou(*_pairwise(boxes1, boxes2))


def generalized_box_iou_aligned(boxes1: Array, boxes2: Array) -> Array:
    """Element-wise GIoU ``[..., K, 4]`` and ``[..., K, 4]`` -> ``[..., K]``; see
    :func:`generalized_box_iou`."""
    return _giou(*_prepare(boxes1, boxes2))


def distance_box_iou(boxes1: Array, boxes2: Array, eps: float = _EPS) -> Array:
    """Pairwise distance IoU (DIoU) ``[..., N, 4]`` x ``[..., M, 4]`` -> ``[..., N, M]``.

    ``IoU - d^2 / (c^2 + eps)`` with ``d`` the distance between the box centres and ``c`` the
    diagonal of the smallest enclosing box; in ``[-1, 1]``. ``eps`` (1e-7, as in torchvision)
    keeps it finite for two identical point boxes; the IoU term follows the zero-union rule.
    """
    return _diou_iou(*_pairwise(boxes1, boxes2), eps)[0]


def distance_box_iou_aligned(boxes1: Array, boxes2: Array, eps: float = _EPS) -> Array:
    """Element-wise DIoU ``[..., K, 4]`` and ``[..., K, 4]`` -> ``[..., K]``; see
    :func:`distance_box_iou`."""
    return _diou_iou(*_prepare(boxes1, boxes2), eps)[0]


def complete_box_iou(boxes1: Array, boxes2: Array, eps: float = _EPS) -> Array:
    """Pairwise complete IoU (CIoU) ``[..., N, 4]`` x ``[..., M, 4]`` -> ``[..., N, M]``.

    ``DIoU - alpha * v`` with ``v = 4 / pi^2 * (atan(w1 / h1) - atan(w2 / h2))^2`` and
    ``alpha = v / (1 - IoU + v + eps)``. For torch inputs ``alpha`` is detached, as in
    torchvision. ``atan(w / h)`` is taken as ``atan2(w, h)``, which is the same for ``h > 0`` and
    0 (not NaN) for a point box.
    """
    return _ciou(*_pairwise(boxes1, boxes2), eps)


def complete_box_iou_aligned(boxes1: Array, boxes2: Array, eps: float = _EPS) -> Array:
    """Element-wise CIoU ``[..., K, 4]`` and ``[..., K, 4]`` -> ``[..., K]``; see
    :func:`complete_box_iou`."""
    return _ciou(*_prepare(boxes1, boxes2), eps)


def box_ios(boxes1: Array, boxes2: Array) -> Array:
    """Pairwise intersection over the smaller area (IoS): ``[..., N, 4]``, ``[..., M, 4]``.

    Returns ``[..., N, M]``.

    ``inter / min(area1, area2)``, in ``[0, 1]``: 1 when one box lies inside the other. Used to
    merge sliced predictions and to match boxes against ignore regions. 0 where the smaller area
    is 0 (a zero-area box never covers or is covered).

    >>> box_ios(np.array([[0.0, 0.0, 4.0, 4.0]]), np.array([[1.0, 1.0, 2.0, 2.0]]))
    array([[1.]])
    """
    return _ios(*_pairwise(boxes1, boxes2))


def box_ios_aligned(boxes1: Array, boxes2: Array) -> Array:
    """Element-wise intersection over the smaller area ``[..., K, 4]`` -> ``[..., K]``; see
    :func:`box_ios`."""
    return _ios(*_prepare(boxes1, boxes2))

