"""Weighted boxes fusion (Solovyev, Wang and Gabruseva, "Weighted boxes fusion: Ensembling boxes
from different object detection models", 2021).

Boxes are absolute ``xyxy`` pixels (ensemble-boxes wants coordinates normalized to ``[0, 1]``;
fusion itself is scale-free, so we take pixels and never clip). Results match
``ensemble_boxes.weighted_boxes_fusion`` to float rounding, because the same steps run in the
same order and precision:

1. every box of model ``t`` gets the weighted score ``score * weights[t]``; boxes with
   ``score < skip_box_threshold`` or zero area are dropped, and ``x1 > x2`` (``y1 > y2``) are
   swapped;
2. per label (labels in order of first appearance), boxes are visited by decreasing weighted
   score; each joins the existing cluster whose *current* fused box has the highest IoU with it
   when that IoU is strictly greater than ``iou_threshold`` (first cluster on ties), otherwise
   it starts a new cluster. A cluster's fused box is the score-weighted mean of its members'
   coordinates, recomputed after each join (in float32, as ensemble-boxes does);
3. the cluster score is rescaled by ``conf_type``:

   - ``"avg"``: mean weighted score ``* min(len(weights), n) / sum(weights)`` (``n`` members;
     ``allows_overflow=True`` uses ``n`` instead of the ``min``);
   - ``"max"``: maximum weighted score ``/ max(weights)``;
   - ``"box_and_model_avg"``: mean ``* n / (member weight sum)``, then ``* (weight sum of the
     distinct models in the cluster) / sum(weights)``;
   - ``"absent_model_aware_avg"``: mean ``* n / (member weight sum + weight sum of the models
     absent from the cluster)``;
4. all fused boxes are sorted by decreasing score.

Ties in score (in steps 2 and 4) come out in the order of numpy's default ``argsort()[::-1]``
on the same array, the call ensemble-boxes makes, so even tied inputs give its order (fused
scores are float32-rounded, so ties between clusters do happen). Differences on purpose:
labels come back as int64 (not float), and bad input raises ``ValueError`` where ensemble-boxes
prints a warning (wrong number of weights, unknown ``conf_type``) or exits.

The engine is a numba kernel: a fused box always lies inside the bounding hull of its members,
so each cluster is registered in the grid cells of that hull and a new box is only compared with
the clusters registered in the cells it covers (exact; the plain scan over all clusters is the
fallback for degenerate layouts). Torch inputs are processed on the CPU and the results are
moved to the device of the first box tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from danlu.boxes._arrays import _device_of, _np, _torch

if TYPE_CHECKING:
    import torch

__all__ = ["weighted_boxes_fusion"]

Array: TypeAlias = "np.ndarray | torch.Tensor"

_CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def _gather(boxes_list: Sequence[Array], scores_list: Sequence[Array],
            labels_list: Sequence[Array]) -> tuple[np.ndarray, ...]:
    """Concatenate the models' predictions, with each box's model index."""
    if not (len(boxes_list) == len(scores_list) == len(labels_list)):
        raise ValueError("boxes_list, scores_list and labels_list must have the same length")
    bs, ss, ls, ms = [], [], [], []
    for t, (b, s, lab) in enumerate(zip(boxes_list, scores_list, labels_list, strict=True)):
        b = np.asarray(_np(b), dtype=np.float64).reshape(-1, 4)
        s = np.asarray(_np(s), dtype=np.float64).reshape(-1)
        lab = np.asarray(_np(lab)).reshape(-1)
        if not (b.shape[0] == s.shape[0] == lab.shape[0]):
            raise ValueError(f"model {t}: {b.shape[0]} boxes, {s.shape[0]} scores and "
                             f"{lab.shape[0]} labels")
        bs.append(b)
        ss.append(s)
        ls.append(lab.astype(np.int64))  # ensemble-boxes truncates labels with int()
        ms.append(np.full(b.shape[0], t, dtype=np.int64))
    if not bs:
        return (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
    return np.concatenate(bs), np.concatenate(ss), np.concatenate(ls), np.concatenate(ms)


def weighted_boxes_fusion(boxes_list: Sequence[Array], scores_list: Sequence[Array],
                          labels_list: Sequence[Array], *, weights: Sequence[float] | None = None,
                          iou_threshold: float = 0.55, skip_box_threshold: float = 0.0,
                          conf_type: str = "avg", allows_overflow: bool = False
                          ) -> tuple[Array, Array, Array]:
    """Fuse the predictions of several models (or test-time augmentations) into one set.

    Args:
        boxes_list: one ``[N_t, 4]`` xyxy array per model, absolute pixels.
        scores_list: one ``[N_t]`` score array per model.
        labels_list: one ``[N_t]`` integer label array per model; only equal labels fuse.
        weights: one weight per model (default all 1).
        iou_threshold: a box joins a cluster when IoU with its fused box ``> iou_threshold``.
        skip_box_threshold: boxes with ``score < skip_box_threshold`` are ignored.
        conf_type: ``"avg"``, ``"max"``, ``"box_and_model_avg"`` or
            ``"absent_model_aware_avg"`` (see the module docstring).
        allows_overflow: for ``"avg"``, let fused scores exceed 1 when a cluster has more
            members than there are models.

    Returns:
        ``(boxes [M, 4] float64, scores [M] float64, labels [M] int64)`` sorted by decreasing
        score. numpy arrays, or tensors on the device of the first tensor among the inputs.
    """
    if conf_type not in _CONF_TYPES:
        raise ValueError(f"conf_type must be one of {_CONF_TYPES}, got {conf_type!r}")
    nmodels = len(boxes_list)
    w = np.ones(nmodels) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (nmodels,):
        raise ValueError(f"need one weight per model ({nmodels}), got {w.shape[0]}")
    device = _device_of(*boxes_list, *scores_list, *labels_list)
    b, s, lab, model = _gather(boxes_list, scores_list, labels_list)
    if not np.isfinite(b).all():
        raise ValueError("boxes must have finite coordinates")

    # 1. prefilter, exactly in ensemble-boxes' order of checks
    b = np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                  np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], axis=1)
    keep = ~(s < skip_box_threshold) & ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) != 0.0)
    b, s, lab, model = b[keep], s[keep], lab[keep], model[keep]
    wt = w[model]
    ws = s * wt
    if b.shape[0] == 0:
        return _out(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), device)

    # 2. group by label (first appearance), then by decreasing weighted score, sorted with the
    # very call ensemble-boxes makes (argsort()[::-1]) so that even ties come out in its order
    uniq, first, inv = np.unique(lab, return_index=True, return_inverse=True)
    by_first = np.argsort(first, kind="stable")
    group_rank = np.empty(uniq.shape[0], np.int64)
    group_rank[by_first] = np.arange(uniq.shape[0])
    key = group_rank[inv]
    members = np.argsort(key, kind="stable")
    counts = np.bincount(key, minlength=uniq.shape[0])
    starts = np.concatenate([[0], np.cumsum(counts)])
    order = np.empty_like(members)
    for g in range(uniq.shape[0]):
        idx = members[starts[g]:starts[g + 1]]
        order[starts[g]:starts[g + 1]] = idx[ws[idx].argsort()[::-1]]
    from danlu.boxes import _wbf_kernels  # numba, imported on first use

    bo = np.ascontiguousarray(b[order])
    member_of, cstart, fb, fscore, fweight, cnt = _wbf_kernels.wbf_sorted(
        bo, np.ascontiguousarray(ws[order]), np.ascontiguousarray(wt[order]),
        starts.astype(np.int64), float(iou_threshold), conf_type == "max")
    clabels = np.repeat(uniq[by_first], np.diff(cstart))

    # 3. rescale the cluster scores
    score = fscore.copy()
    wsum = w.sum()
    if conf_type == "max":
        score = score / w.max()
    elif conf_type == "avg":
        factor = cnt if allows_overflow else np.minimum(nmodels, cnt)
        score = score * factor / wsum
    else:
        # weight sum of the distinct models present in each cluster
        present = np.zeros((fb.shape[0], nmodels), dtype=bool)
        present[member_of, model[order]] = True
        if conf_type == "box_and_model_avg":
            score = score * cnt / fweight
            score = score * _row_sums(present, w) / wsum
        else:
            score = score * cnt / (fweight + _row_sums(~present, w))

    # 4. sort by decreasing score, again with ensemble-boxes' own call
    final = score.argsort()[::-1]
    return _out(fb[final], score[final], clabels[final], device)


def _row_sums(mask: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per row, the sum of ``w`` over the marked models, added in increasing model order."""
    out = np.zeros(mask.shape[0])
    for t in range(mask.shape[1]):
        out = out + np.where(mask[:, t], w[t], 0.0)
    return out


def _out(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
         device: torch.device | None) -> tuple[Array, Array, Array]:
    if device is None:
        return boxes, scores, labels
    torch = _torch()
    return (torch.from_numpy(np.ascontiguousarray(boxes)).to(device),
            torch.from_numpy(np.ascontiguousarray(scores)).to(device),
            torch.from_numpy(np.ascontiguousarray(labels)).to(device))
