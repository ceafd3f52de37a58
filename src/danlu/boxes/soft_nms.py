"""Soft-NMS (Bodla et al., "Soft-NMS -- Improving Object Detection With One Line of Code", 2017).

Instead of deleting the boxes that overlap a picked box, Soft-NMS lowers their scores:

- ``"linear"``: ``s_j <- s_j * (1 - IoU)`` when ``IoU > iou_threshold`` (strictly), else unchanged;
- ``"gaussian"``: ``s_j <- s_j * exp(-IoU**2 / sigma)`` for every remaining box.

The box picked next is always the remaining one with the highest *current* score. Every box is
picked in turn and decays the boxes after it, including boxes whose score has already fallen
below ``score_threshold``; at the end the boxes whose decayed score is strictly greater than
``score_threshold`` are returned. These are exactly the semantics of ensemble-boxes'
``soft_nms`` (our oracle), with the float64 arithmetic done in the same order.

Differences from ensemble-boxes, on purpose:

- **we return the decayed scores**; ensemble-boxes returns the kept boxes with their original,
  undecayed scores (so its output cannot be re-thresholded or ranked by the Soft-NMS score);
- ties between equal current scores go to the lower index (ensemble-boxes' swap-based loop
  breaks them by the boxes' positions after earlier swaps);
- boxes are taken as given: no clipping to ``[0, 1]`` (we work in pixels), no reordering of
  ``x1 > x2`` coordinates, and zero-area boxes are kept (they overlap nothing, so they are
  never decayed) where ensemble-boxes drops them; there are no per-model ``weights``.

The engine is a numba kernel (a lazy max-heap over the current scores plus a uniform-grid
spatial index: a pick only decays the boxes that overlap it, so only those are visited). It is
exact: the same decays in the same order as the quadratic loop. Torch tensors, CUDA included,
are processed on the CPU and the result is moved back to the input's device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from danlu.boxes._arrays import (
    _group_order,
    _index_out,
    _labels,
    _np,
    _rank_order,
    _values_out,
    _vector,
)

if TYPE_CHECKING:
    import torch

__all__ = ["soft_nms"]

Array: TypeAlias = "np.ndarray | torch.Tensor"


def soft_nms(boxes: Array, scores: Array, *, method: str = "gaussian", sigma: float = 0.5,
             iou_threshold: float = 0.3, score_threshold: float = 0.001,
             labels: Array | None = None) -> tuple[Array, Array]:
    """Soft-NMS, linear or gaussian; class-aware when ``labels`` is given.

    Args:
        boxes: ``[N, 4]`` xyxy boxes, absolute pixels; computed in float64.
        scores: ``[N]`` scores (NaN is not allowed).
        method: ``"gaussian"`` (weight ``exp(-IoU**2 / sigma)``) or ``"linear"`` (weight
            ``1 - IoU`` when ``IoU > iou_threshold``).
        sigma: the gaussian's width; only used by ``"gaussian"``.
        iou_threshold: the linear method's overlap threshold (strict ``>``); unused by
            ``"gaussian"``.
        score_threshold: boxes whose decayed score is ``<= score_threshold`` are dropped.
        labels: optional ``[N]`` class ids; boxes of different classes do not decay each other.

    Returns:
        ``(keep, decayed_scores)``: int64 indices of the surviving boxes and their decayed
        scores (dtype of ``scores`` if floating, else float64), sorted by decreasing decayed
        score, ties by lower index. Same kind as ``boxes`` (numpy, or tensor on its device).
    """
    if method not in ("gaussian", "linear"):
        raise ValueError(f"method must be 'gaussian' or 'linear', got {method!r}")
    b = np.ascontiguousarray(_np(boxes), dtype=np.float64)
    if b.ndim == 1 and b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(b.shape)}")
    n = b.shape[0]
    s_in = _vector(scores, n, "scores")
    out_dtype = s_in.dtype if s_in.dtype.kind == "f" else np.float64
    s = s_in.astype(np.float64)
    if np.isnan(s).any():
        raise ValueError("scores must not contain NaN")
    if method == "gaussian" and not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if n == 0:
        return _index_out(np.zeros(0, np.int64), boxes), _values_out(s[:0].astype(out_dtype),
                                                                     boxes)
    from danlu.boxes import _soft_nms_kernels  # numba, imported on first use

    perm, _, starts = _group_order(np.arange(n, dtype=np.int64),
                                   None if labels is None else _labels(labels, n))
    bp = np.ascontiguousarray(b[perm])
    _, decayed = _soft_nms_kernels.soft_nms_sorted(bp, s[perm], starts, method == "linear",
                                                   float(iou_threshold), float(sigma))
    alive = np.flatnonzero(decayed > score_threshold)
    idx = perm[alive]
    val = decayed[alive]
    by_index = np.argsort(idx, kind="stable")
    idx, val = idx[by_index], val[by_index]
    order = _rank_order(val)
    return (_index_out(idx[order], boxes),
            _values_out(val[order].astype(out_dtype, copy=False), boxes))
