"""DOTA AP: task 1 (oriented boxes, polygon IoU) and task 2 (horizontal boxes), as DOTA_devkit's
``dota_evaluation_task1.py`` / ``dota_evaluation_task2.py`` define them.

Both run the VOC matching (:mod:`danlu.evaluate.voc`) per class (detections by decreasing
score, each takes its best-overlapping ground truth, difficult ones included; a difficult match
counts neither way; a second match of a ground truth is a FP), with DOTA_devkit's choices:

* **strict threshold**: a match needs ``IoU > 0.5`` (``ovmax > ovthresh``), not ``>=``;
* **VOC07 11-point AP** by default (``use_07_metric=True`` in the devkit's ``main``);
  ``eleven_point=False`` gives the all-point AP;
* **task 1** computes the exact polygon IoU (:func:`danlu.boxes.polygon.polygon_iou`, convex
  quadrilaterals) of each detection with the ground truth whose enclosing horizontal boxes
  overlap. The devkit pre-filters with the ``+1``-pixel horizontal IoU ``> 0``; since polygons
  whose enclosing boxes do not overlap have polygon IoU 0, the pre-filter never changes the
  result for a positive threshold, and ours skips exactly the pairs that cannot count;
* **task 2** uses DOTA_devkit's ``+1``-pixel IoU on the horizontal boxes
  (``(x2 - x1 + 1) * (y2 - y1 + 1)`` areas), on the coordinates as given;
* ties in score keep the input order (the devkit's unstable ``np.argsort`` leaves them to
  numpy); a class without countable ground truth has AP NaN and is left out of the mAP (the
  devkit divides by zero there).

Detections without polygons are taken as their axis-aligned boxes in task 1.

How task 1 runs: since a detection's verdict needs only its best-overlapping ground truth
(there is no fall-back to the second best), the polygon IoUs are computed first, in image order
(candidate pairs by the enclosing boxes, then :func:`~danlu.boxes.polygon.polygon_iou_pairs`,
which orients each polygon once), and reduced to each detection's best; the devkit's loop in
decreasing score order then only reads those. Measured by ``benchmarks/eval.py`` at COCO scale
against the devkit's Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numba
import numpy as np

from danlu.errors import ConfigError
from danlu.evaluate._common import (
    Flat,
    _box_polygons,
    align_predictions,
    check_iou_threshold,
    check_labels,
    flatten,
)
from danlu.evaluate._sorting import argsort_descending
from danlu.evaluate.result import EvalResult
from danlu.evaluate.voc import (
    Match,
    _decide,
    _overlapping_pairs,
    average_precision,
    voc_style_ap,
)
from danlu.structures import Dataset, Detections


def evaluate_dota(gt: Dataset, predictions: Dataset | Sequence[Detections], *,
                  task: Literal[1, 2] = 1, iou: float = 0.5, eleven_point: bool = True,
                  match: Match = ">") -> EvalResult:
    """DOTA mAP and per-class AP (see the module docstring for the exact rules).

    Args:
        gt: ground truth with ``polygons`` (task 1; boxes without polygons are taken as
            axis-aligned) and optional ``difficult`` flags.
        predictions: one ``Detections`` with scores per ground-truth sample (a list in order,
            or a ``Dataset`` matched by sample id).
        task: 1 for oriented boxes (polygon IoU), 2 for horizontal boxes (``+1`` pixel IoU).
        iou: the matching IoU threshold, in (0, 1].
        eleven_point: VOC07 11-point AP (DOTA_devkit's default); False gives the all-point AP.
        match: ``">"`` (DOTA_devkit, default) or ``">="``.

    Returns:
        :class:`EvalResult` with protocol ``"dota"`` (task 1) or ``"dota-hbb"`` (task 2).

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Dataset, Detections, Sample
        >>> square = np.array([[[10, 10], [50, 10], [50, 50], [10, 50]]], np.float32)
        >>> gt = Dataset([Sample(None, 100, 100, Detections(None, [0], polygons=square), id=0)],
        ...              ["plane"])
        >>> pred = [Detections(None, [0], scores=[0.9], polygons=square + 2)]
        >>> round(evaluate_dota(gt, pred).mAP, 6)
        1.0
    """
    if task not in (1, 2):
        raise ConfigError(f"DOTA task must be 1 or 2, not {task!r}")
    preds = align_predictions(gt, predictions)
    gt_dets = gt.detections()
    g = flatten(gt_dets)
    d = flatten(preds, scores=True)
    check_labels(g, len(gt.class_names), gt, "ground truth")
    check_labels(d, len(gt.class_names), gt, "predictions")
    params = {"task": task, "iou": iou, "match": match, "eleven_point": eleven_point}
    if task == 2:
        return voc_style_ap(g, d, num_images=len(gt), class_names=gt.class_names, iou=iou,
                            match=match, eleven_point=eleven_point, protocol="dota-hbb",
                            plus_one=1.0, params=params)
    if match not in (">=", ">"):
        raise ConfigError(f"match must be '>=' or '>', not {match!r}")
    iou = check_iou_threshold(iou)
    from danlu.boxes.polygon import polygon_iou_pairs  # here: danlu.boxes loads torch

    g_poly, d_poly = _polygons(gt_dets), _polygons(preds)
    g_box, d_box = _enclosing(g_poly), _enclosing(d_poly)
    # Flat arrays are in image order: the ground truth of image i is g_start[i]:g_start[i + 1].
    g_start = np.searchsorted(g.image, np.arange(len(gt) + 1), side="left")
    offsets, pair_gt = _overlapping_pairs(d.image, d.labels, d_box, g_start, g.labels, g_box)
    pair_det = np.repeat(np.arange(len(d), dtype=np.int64), np.diff(offsets))
    ious = polygon_iou_pairs(d_poly, g_poly, pair_det, pair_gt)
    ovmax, jmax = _best_overlap(offsets, pair_gt, ious)
    order = _class_score_order(d.labels, d.scores, len(gt.class_names))
    difficult = g.difficult | g.ignore | g.crowd
    state = _verdicts(order, ovmax, jmax, difficult, iou, match == ">", len(g))
    return _ap(state, d.labels[order], g, difficult, gt.class_names, eleven_point, params)


def _polygons(dets: Sequence[Detections]) -> np.ndarray:
    """``[N, 4, 2]`` float32 polygons of all images (axis-aligned boxes as their corners)."""
    parts = [x.polygons if x.polygons is not None else _box_polygons(x.xyxy)
             for x in dets if len(x)]
    return np.concatenate(parts) if parts else np.zeros((0, 4, 2), np.float32)


@numba.njit(cache=True, nogil=True)
def _enclosing(p: np.ndarray) -> np.ndarray:
    """``[N, 4, 2]`` -> ``[N, 4]`` float64 enclosing xyxy."""
    out = np.empty((p.shape[0], 4))
    for i in range(p.shape[0]):
        out[i, 0] = min(min(p[i, 0, 0], p[i, 1, 0]), min(p[i, 2, 0], p[i, 3, 0]))
        out[i, 1] = min(min(p[i, 0, 1], p[i, 1, 1]), min(p[i, 2, 1], p[i, 3, 1]))
        out[i, 2] = max(max(p[i, 0, 0], p[i, 1, 0]), max(p[i, 2, 0], p[i, 3, 0]))
        out[i, 3] = max(max(p[i, 0, 1], p[i, 1, 1]), max(p[i, 2, 1], p[i, 3, 1]))
    return out


@numba.njit(cache=True, nogil=True)
def _best_overlap(offsets: np.ndarray, pair_gt: np.ndarray, ious: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Each detection's largest IoU (-1 without pairs) and its ground truth (the first one on
    ties, -1 without pairs)."""
    n = offsets.shape[0] - 1
    ovmax = np.full(n, -1.0)
    jmax = np.full(n, -1, np.int64)
    for i in range(n):
        for p in range(offsets[i], offsets[i + 1]):
            if ious[p] > ovmax[i]:
                ovmax[i] = ious[p]
                jmax[i] = pair_gt[p]
    return ovmax, jmax


@numba.njit(cache=True, nogil=True)
def _class_score_order(labels: np.ndarray, scores: np.ndarray, num_classes: int) -> np.ndarray:
    """Indices by class, then decreasing score, then input order: a stable radix sort on the
    score followed by a stable counting sort on the class."""
    by_score = argsort_descending(scores)
    start = np.zeros(num_classes + 1, np.int64)
    for i in range(labels.shape[0]):
        start[labels[i] + 1] += 1
    for c in range(num_classes):
        start[c + 1] += start[c]
    order = np.empty(labels.shape[0], np.int64)
    for i in by_score:
        c = labels[i]
        order[start[c]] = i
        start[c] += 1
    return order


@numba.njit(cache=True, nogil=True)
def _verdicts(order: np.ndarray, ovmax: np.ndarray, jmax: np.ndarray, difficult: np.ndarray,
              thresh: float, strict: bool, num_gt: int) -> np.ndarray:
    """The devkit's loop over the detections in ``order``: 1 TP, 0 FP, -1 neither."""
    out = np.zeros(order.shape[0], np.int8)
    taken = np.zeros(num_gt, np.bool_)
    for k in range(order.shape[0]):
        i = order[k]
        out[k] = _decide(ovmax[i], jmax[i], thresh, strict, difficult, taken)
    return out


def _ap(state: np.ndarray, labels_sorted: np.ndarray, g: Flat, difficult: np.ndarray,
        class_names: Sequence[str], eleven_point: bool, params: dict) -> EvalResult:
    """Per-class AP from the verdicts of the detections sorted by class and score."""
    num_classes = len(class_names)
    counted = state >= 0
    labels_sorted = labels_sorted[counted]
    tp = (state[counted] == 1).astype(np.float64)
    fp = 1.0 - tp
    npos = np.bincount(g.labels[~difficult], minlength=num_classes)[:num_classes]
    starts = np.searchsorted(labels_sorted, np.arange(num_classes + 1))
    per_class: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    eps = np.finfo(np.float64).eps
    for c, name in enumerate(class_names):
        if npos[c] == 0:
            per_class[name] = float("nan")
            curves[name] = (np.zeros(0), np.zeros(0))
            continue
        ctp, cfp = np.cumsum(tp[starts[c]:starts[c + 1]]), np.cumsum(fp[starts[c]:starts[c + 1]])
        rec = ctp / float(npos[c])
        prec = ctp / np.maximum(ctp + cfp, eps)
        per_class[name] = average_precision(rec, prec, eleven_point=eleven_point)
        curves[name] = (rec, prec)
    aps = np.array([v for v in per_class.values() if not np.isnan(v)])
    m_ap = float(np.mean(aps)) if len(aps) else float("nan")
    return EvalResult(
        protocol="dota", class_names=list(class_names), stats=np.array([m_ap]),
        metrics={"mAP": m_ap}, per_class=per_class,
        num_gt={name: int(npos[c]) for c, name in enumerate(class_names)},
        curves=curves, params=params)


__all__ = ["evaluate_dota"]
