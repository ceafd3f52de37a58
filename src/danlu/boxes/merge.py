"""Non-maximum merging (NMM), as SAHI uses it to join the predictions of overlapping slices.

Where NMS throws the overlapping lower-scored boxes away, NMM merges them into the kept box:
the result is the enclosing box of the cluster, with the highest score. Two steps, as in SAHI
(``sahi.postprocess.combine``):

1. **Clustering** (:func:`greedy_nmm` or :func:`nmm`) returns ``{keep_index: [member, ...]}``.
   Two boxes *match* when their metric is ``>= match_threshold`` (note: ``>=``, unlike NMS's
   ``>``); the metric is IoU, or IoS (intersection over the smaller area, ``"IOS"``), which
   joins a small partial box cut by a slice border to the large box it belongs to.

   - greedy NMM: boxes by decreasing score; the first remaining box is kept and takes every
     remaining box that matches it (hard NMS that remembers whom it suppressed). Members are
     listed by decreasing score.
   - NMM: every box, in decreasing score order, looks at *all* boxes matching it. A box not yet
     merged anywhere becomes a keeper and takes its unassigned matches; a box already merged
     into keeper ``k`` hands its unassigned, non-keeper matches to ``k``, so clusters grow
     transitively. Each step lists its new members by increasing score (SAHI's order).

2. **Merging** (:func:`merge_predictions`): each keeper folds in its members in list order,
   each only if it still matches the merged box so far with metric **strictly greater** than
   the threshold (SAHI's ``has_match``); the merged box is the enclosing box, its score the
   maximum, and its label the label of the higher-scored of the two (the member's on a tie,
   like SAHI's ``get_merged_category``).

Conventions: boxes are absolute ``xyxy``; metrics are computed in float64; a zero denominator
gives a metric of 0 (SAHI divides and gets NaN, which its ``<`` test then counts as a match,
so a zero-area box matches everything there in IoS mode: we consider that a bug). Ties in score
are broken by lower index first (SAHI uses an unstable sort). With ``labels``, only boxes of the
same label match (SAHI's ``batched_*``). Keys of the returned dict are in decreasing score order.
The engine is a numba kernel with the grid spatial index of ``_grid`` (exact; the plain loop
for ``match_threshold <= 0``). Torch inputs are processed on the CPU; index dicts hold Python
ints and merged arrays come back on the input's device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from danlu.boxes._arrays import (
    _device_of,
    _group_order,
    _labels,
    _np,
    _rank_order,
    _scores,
    _torch,
    _vector,
)

if TYPE_CHECKING:
    import torch

__all__ = ["greedy_nmm", "nmm", "merge_predictions"]

Array: TypeAlias = "np.ndarray | torch.Tensor"


def _kernels() -> ModuleType:
    """The numba kernels, imported on first use (importing the package does not import numba)."""
    from danlu.boxes import _nmm_kernels

    return _nmm_kernels


def _metric(match_metric: str) -> bool:
    m = match_metric.upper()
    if m not in ("IOU", "IOS"):
        raise ValueError(f"match_metric must be 'IOU' or 'IOS', got {match_metric!r}")
    return m == "IOS"


def _boxes64(boxes: Array) -> np.ndarray:
    b = np.asarray(_np(boxes), dtype=np.float64)
    if b.ndim == 1 and b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {list(b.shape)}")
    return np.ascontiguousarray(b)


def _cluster(boxes: Array, scores: Array, labels: Array | None, match_metric: str,
             match_threshold: float, greedy: bool) -> dict[int, list[int]]:
    ios = _metric(match_metric)
    b = _boxes64(boxes)
    n = b.shape[0]
    s = _scores(scores, n)
    if n == 0:
        return {}
    order = _rank_order(s)
    perm, _, starts = _group_order(order, None if labels is None else _labels(labels, n))
    keeper, pk, pm = _kernels().nmm_sorted(np.ascontiguousarray(b[perm]), starts,
                                         float(match_threshold), ios, greedy)
    kept = perm[np.flatnonzero(keeper)]
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    result: dict[int, list[int]] = {int(k): [] for k in kept[np.argsort(rank[kept])]}
    for k, m in zip(perm[pk].tolist(), perm[pm].tolist(), strict=True):
        result[k].append(m)
    return result


def greedy_nmm(boxes: Array, scores: Array, labels: Array | None = None, *,
               match_metric: str = "IOU", match_threshold: float = 0.5) -> dict[int, list[int]]:
    """Greedy non-maximum merging clusters (SAHI's ``greedy_nmm`` / ``batched_greedy_nmm``).

    Args:
        boxes: ``[N, 4]`` xyxy boxes, absolute pixels.
        scores: ``[N]`` scores.
        labels: optional ``[N]`` class ids; only boxes of the same class are merged.
        match_metric: ``"IOU"`` or ``"IOS"``.
        match_threshold: boxes match when ``metric >= match_threshold``.

    Returns:
        ``{keep_index: [member indices by decreasing score]}``, keys by decreasing score (ties
        by lower index). Every input index appears exactly once, as a key or as a member.
    """
    return _cluster(boxes, scores, labels, match_metric, match_threshold, greedy=True)


def nmm(boxes: Array, scores: Array, labels: Array | None = None, *, match_metric: str = "IOU",
        match_threshold: float = 0.5) -> dict[int, list[int]]:
    """Non-greedy non-maximum merging clusters (SAHI's ``nmm`` / ``batched_nmm``).

    Same arguments as :func:`greedy_nmm`. Clusters grow transitively through members (see the
    module docstring). Returns ``{keep_index: [member indices]}`` with keys by decreasing score;
    every input index appears exactly once.
    """
    return _cluster(boxes, scores, labels, match_metric, match_threshold, greedy=False)


def merge_predictions(boxes: Array, scores: Array, labels: Array | None,
                      keep_to_merge: Mapping[int, Sequence[int]], *, match_metric: str = "IOU",
                      match_threshold: float = 0.5) -> tuple[Array, Array, Array]:
    """Merge each cluster into one prediction, SAHI's way (see the module docstring).

    Args:
        boxes: the predicted boxes the clusters index into.
        scores: their scores.
        labels: their labels (None: all 0).
        keep_to_merge: ``{keep_index: [member, ...]}`` from :func:`greedy_nmm` or :func:`nmm`.
        match_metric: ``"IOU"`` or ``"IOS"``.
        match_threshold: a member is folded in when its metric with the merged box so far is
            strictly greater than this.

    Returns:
        ``(boxes [K, 4] float64, scores [K] float64, labels [K] int64)``, one row per key of
        ``keep_to_merge`` in its order. numpy arrays, or tensors on the input's device.
    """
    ios = _metric(match_metric)
    b = _boxes64(boxes)
    n = b.shape[0]
    s = _vector(scores, n, "scores", np.float64)
    lab = np.zeros(n, np.int64) if labels is None else _labels(labels, n)
    keepers = np.fromiter(keep_to_merge.keys(), dtype=np.int64, count=len(keep_to_merge))
    sizes = np.fromiter((len(v) for v in keep_to_merge.values()), dtype=np.int64,
                        count=len(keep_to_merge))
    mstart = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    members = np.fromiter((m for v in keep_to_merge.values() for m in v), dtype=np.int64,
                          count=int(mstart[-1]))
    if keepers.size and (keepers.min() < 0 or keepers.max() >= n):
        raise ValueError("keep_to_merge has an index out of range")
    if members.size and (members.min() < 0 or members.max() >= n):
        raise ValueError("keep_to_merge has an index out of range")
    ob, osc, olab = _kernels().merge_clusters(b, s, lab, keepers, mstart, members,
                                            float(match_threshold), ios)
    device = _device_of(boxes, scores, labels)
    if device is None:
        return ob, osc, olab
    torch = _torch()
    return (torch.from_numpy(ob).to(device), torch.from_numpy(osc).to(device),
            torch.from_numpy(olab).to(device))
