"""Hard non-maximum suppression: class-agnostic, class-aware (batched) and IoU-guided.

Boxes are absolute ``xyxy``, continuous (area ``(x2 - x1) * (y2 - y1)``, no ``+1``). Inputs may
be numpy arrays or torch tensors; the result has the input's kind (indices are int64, on the
input's device).

Semantics are torchvision's (``torchvision.ops.nms`` / ``batched_nms``):

- boxes are visited by decreasing score; a visited box that is not suppressed is kept and
  suppresses every later box whose IoU with it is **strictly greater** than ``iou_threshold``;
- IoU is computed with the same operations, in the same order and dtype as torchvision's CPU
  kernel (float32 for float32 input, float64 for float64), so the comparisons agree bit for bit;
- the kept indices come back sorted by decreasing score.

One deliberate difference: **ties in score are broken by lower index first** (a stable sort),
so the result is deterministic. torchvision's CPU kernel uses an unstable sort, so among boxes
with exactly equal scores that overlap, which one it keeps depends on the sort's internals.
NaN scores rank above every number, as in ``torch.sort``.

The CPU engine is a numba kernel with a uniform-grid spatial index (see ``_grid``): exact, and
close to linear in the number of boxes for realistic layouts, where torchvision's loop is
quadratic. Up to a few thousand boxes, ``nms`` and ``batched_nms`` run a pure-numpy sweep
instead (``_nms_sweep``, same result) until the process has loaded the kernel (a larger call,
or ``SWEEP_CALLS`` small calls): the first numba call in a process costs hundreds of
milliseconds even with its compiled code cached on disk, the sweep about a millisecond, and
once loaded the kernel is the faster at every size. CUDA
tensors are handed to torchvision's CUDA kernel for ``nms``/``batched_nms``
(same ``>`` rule; its tie order is its own); ``iou_guided_nms`` and ``polygon_nms`` run on the
CPU and move the result back.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from danlu.boxes import _nms_sweep
from danlu.boxes._arrays import (
    _float_boxes,
    _group_order,
    _index_out,
    _is_tensor,
    _labels,
    _np,
    _rank_order,
    _scores,
    _values_out,
)

if TYPE_CHECKING:
    import torch

__all__ = ["nms", "batched_nms", "iou_guided_nms", "polygon_nms"]

Array: TypeAlias = "np.ndarray | torch.Tensor"


def _kernels() -> ModuleType:
    """The numba kernels, imported on first use (importing the package does not import numba)."""
    from danlu.boxes import _nms_kernels

    return _nms_kernels


def _on_cuda(*xs: Any) -> bool:
    return any(_is_tensor(x) and x.is_cuda for x in xs)


#: small calls served by the numpy sweep before a process loads the numba kernel
SWEEP_CALLS = 16
_sweep_calls = [0]  # per process, like numba's own loaded-kernel state


def _keep(boxes: np.ndarray, order: np.ndarray, labels: np.ndarray | None,
          iou_threshold: float) -> np.ndarray:
    """Kept indices of hard NMS, by decreasing rank: the numpy sweep when it applies."""
    thr = float(iou_threshold)
    # the sweep spares a fresh process numba's start-up; once this process has loaded the
    # kernel (a large call, or SWEEP_CALLS small ones: a process that keeps calling), the
    # kernel is the faster of the two at every size
    if (order.shape[0] <= _nms_sweep.MAX_BOXES and _sweep_calls[0] < SWEEP_CALLS
            and "danlu.boxes._nms_kernels" not in sys.modules):
        _sweep_calls[0] += 1
        b = np.ascontiguousarray(boxes[order])
        kept = _nms_sweep.nms_keep(b, None if labels is None else labels[order], thr)
        if kept is not None:
            return order[kept]
    kept, _ = _run(boxes, order, labels, thr, None)
    return kept


def _run(boxes: np.ndarray, order: np.ndarray, labels: np.ndarray | None, iou_threshold: float,
         cls: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The kernel's kept indices (by decreasing rank) and, when ``cls`` is given, their
    cluster maxima."""
    perm, sub, starts = _group_order(order, labels)
    b = np.ascontiguousarray(boxes[perm])
    track = cls is not None
    c = np.ascontiguousarray(cls[perm]) if track else np.zeros(perm.shape[0], np.float32)
    keep, best = _kernels().nms_sorted(b, starts, float(iou_threshold), c, track)
    pos = np.flatnonzero(keep)
    if sub is not None:
        # positions in `perm` -> positions in `order` (= ranks), then back to rank order
        ranks = np.sort(sub[pos])
        kept = order[ranks]
        if not track:
            return kept, None
        rank_best = np.empty(order.shape[0], dtype=best.dtype)
        rank_best[sub[pos]] = best[pos]
        return kept, rank_best[ranks]
    return perm[pos], (best[pos] if track else None)


def nms(boxes: Array, scores: Array, iou_threshold: float) -> Array:
    """Class-agnostic hard NMS, with torchvision's semantics.

    Args:
        boxes: ``[N, 4]`` xyxy boxes, absolute pixels. float64 is computed in float64, any other
            dtype in float32 (as torchvision does for float32).
        scores: ``[N]`` scores; higher is better.
        iou_threshold: a box is suppressed when its IoU with a kept, higher-ranked box is
            strictly greater than this (``IoU > iou_threshold``).

    Returns:
        int64 indices of the kept boxes, sorted by decreasing score; ties in score are broken by
        lower index first. Same kind as ``boxes`` (numpy array, or tensor on its device).

    Boxes with zero or negative area, or with non-finite coordinates, never suppress anything
    and are never suppressed (for ``iou_threshold >= 0``), exactly as in torchvision. CUDA
    tensors run torchvision's CUDA kernel.
    """
    if _on_cuda(boxes, scores):
        import torchvision

        return torchvision.ops.nms(boxes, scores.to(boxes.dtype), float(iou_threshold))
    b = _float_boxes(boxes)
    s = _scores(scores, b.shape[0])
    if b.shape[0] == 0:
        return _index_out(np.zeros(0, np.int64), boxes)
    return _index_out(_keep(b, _rank_order(s), None, iou_threshold), boxes)


def batched_nms(boxes: Array, scores: Array, labels: Array, iou_threshold: float) -> Array:
    """Class-aware hard NMS: boxes with different labels never suppress each other.

    Args:
        boxes: ``[N, 4]`` xyxy boxes, absolute pixels (dtype handling as in :func:`nms`).
        scores: ``[N]`` scores.
        labels: ``[N]`` integer class ids (torchvision calls them ``idxs``).
        iou_threshold: suppress when ``IoU > iou_threshold`` (strictly), within one class.

    Returns:
        int64 indices of the kept boxes over all classes, sorted by decreasing score (ties by
        lower index first). Same kind as ``boxes``.

    Unlike torchvision's small-input path (which shifts each class by an offset and so computes
    IoU on shifted, differently rounded coordinates), the IoU is always computed on the boxes
    as given. CUDA tensors run ``torchvision.ops.batched_nms``.
    """
    if _on_cuda(boxes, scores, labels):
        import torchvision

        return torchvision.ops.batched_nms(boxes, scores.to(boxes.dtype), labels,
                                           float(iou_threshold))
    b = _float_boxes(boxes)
    n = b.shape[0]
    s = _scores(scores, n)
    lab = _labels(labels, n)
    if n == 0:
        return _index_out(np.zeros(0, np.int64), boxes)
    return _index_out(_keep(b, _rank_order(s), lab, iou_threshold), boxes)


def iou_guided_nms(boxes: Array, cls_scores: Array, loc_scores: Array, iou_threshold: float,
                   labels: Array | None = None) -> tuple[Array, Array]:
    """IoU-guided NMS (Jiang et al., "Acquisition of Localization Confidence", ECCV 2018, Alg. 1).

    Boxes are ranked by their localization confidence ``loc_scores`` (the predicted IoU with the
    ground truth) instead of the classification score. The highest-ranked remaining box is kept
    and suppresses every remaining box with ``IoU > iou_threshold`` (strictly), as hard NMS
    does; the kept box's new classification score is the maximum of ``cls_scores`` over itself
    and the boxes it suppressed in that step (boxes already suppressed by an earlier kept box do
    not count again).

    Args:
        boxes: ``[N, 4]`` xyxy boxes, absolute pixels (dtype handling as in :func:`nms`).
        cls_scores: ``[N]`` classification scores.
        loc_scores: ``[N]`` localization scores; ranking uses these, ties by lower index first.
        iou_threshold: suppress when ``IoU > iou_threshold``.
        labels: optional ``[N]`` class ids; when given, only boxes of the same class interact.

    Returns:
        ``(keep, new_scores)``: int64 indices of the kept boxes sorted by decreasing
        localization score, and their updated classification scores (``cls_scores``' dtype).
        Same kind as ``boxes``; CUDA tensors are processed on the CPU and moved back.
    """
    b = _float_boxes(boxes)
    n = b.shape[0]
    loc = _scores(loc_scores, n, "loc_scores")
    cls = _scores(cls_scores, n, "cls_scores")
    lab = None if labels is None else _labels(labels, n)
    if n == 0:
        return _index_out(np.zeros(0, np.int64), boxes), _values_out(cls[:0], boxes)
    kept, best = _run(b, _rank_order(loc), lab, iou_threshold, cls)
    return _index_out(kept, boxes), _values_out(best, boxes)


def polygon_nms(polygons: Array, scores: Array, iou_threshold: float,
                labels: Array | None = None) -> Array:
    """Hard NMS for oriented boxes given as convex quadrilaterals ``[N, 4, 2]``.

    Same rules as :func:`nms` (visit by decreasing score, ties by lower index; suppress when the
    exact polygon IoU is strictly greater than ``iou_threshold``), class-aware when ``labels``
    is given. Two polygons can only have a positive IoU when their enclosing axis-aligned boxes
    overlap with positive area, so only those pairs (found with the grid index) are measured,
    with :func:`danlu.boxes.polygon.polygon_iou_aligned` (exact, float64; a degenerate polygon
    has IoU 0 with everything).

    Args:
        polygons: ``[N, 4, 2]`` vertices (DOTA order or reversed), absolute pixels.
        scores: ``[N]`` scores.
        iou_threshold: suppress when ``IoU > iou_threshold``.
        labels: optional ``[N]`` class ids.

    Returns:
        int64 indices of the kept polygons, sorted by decreasing score. Same kind as
        ``polygons``; tensors are processed on the CPU and the result moved to their device.
    """
    from danlu.boxes.polygon import polygon_iou_aligned

    p = np.ascontiguousarray(_np(polygons), dtype=np.float64)
    if p.size == 0:
        p = p.reshape(0, 4, 2)
    if p.ndim != 3 or p.shape[1:] != (4, 2):
        raise ValueError(f"polygons must have shape [N, 4, 2], got {list(p.shape)}")
    n = p.shape[0]
    s = _scores(scores, n)
    if n == 0:
        return _index_out(np.zeros(0, np.int64), polygons)
    order = _rank_order(s)
    perm, sub, starts = _group_order(order, None if labels is None else _labels(labels, n))
    pp = p[perm]
    if iou_threshold < 0:
        # every IoU (always a number, >= 0) exceeds the threshold: each group keeps its first
        keep = np.zeros(n, dtype=bool)
        keep[starts[:-1]] = True
    else:
        enclosing = np.ascontiguousarray(np.concatenate([pp.min(axis=1), pp.max(axis=1)], 1))
        first, second = _kernels().overlap_pairs(enclosing, starts)
        iou = np.asarray(polygon_iou_aligned(pp[first], pp[second]), dtype=np.float64)
        keep = _kernels().greedy_from_pairs(n, first, second, iou, float(iou_threshold))
    pos = np.flatnonzero(keep)
    if sub is None:
        return _index_out(perm[pos], polygons)
    return _index_out(order[np.sort(sub[pos])], polygons)
