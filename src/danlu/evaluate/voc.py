"""Pascal VOC average precision: VOC2007 11-point and VOC2010+ all-point, exact and fast.

The matching follows the official devkit (``VOCevaldet.m``), per class:

1. detections of the class, over all images, are sorted by decreasing score; ties keep the
   input order (image order, then box order), as MATLAB's stable ``sort`` does;
2. each detection takes the ground truth of its image and class with the largest IoU (the
   first one on ties), *including* difficult ones;
3. if that IoU reaches the threshold: a difficult ground truth makes the detection neither TP
   nor FP; a ground truth not yet taken makes it a TP (and takes it); one already taken makes
   it a FP. Otherwise the detection is a FP. There is no fall-back to the second-best box.

**Threshold.** The devkit counts a match at ``ov >= 0.5`` (``match=">="``, the default);
py-faster-rcnn's ``voc_eval.py`` and DOTA_devkit use ``ov > 0.5`` (``match=">"``).

**Coordinates.** The devkit computes IoU on 1-based inclusive integer pixels with ``+1``
widths. danlu's VOC reader converts a box ``xmin..xmax`` to the continuous ``xmin - 1 .. xmax``,
and the continuous IoU of the converted boxes equals the devkit's ``+1`` IoU exactly
(``min(xmax) - max(xmin - 1) = min(xmax) - max(xmin) + 1``), so no ``+1`` appears here.

**AP.** Recall ``tp / npos`` (``npos``: ground truth that is not difficult), precision
``tp / (tp + fp)``. ``voc07``: the mean over the 11 recall thresholds ``np.arange(0, 1.1, 0.1)``
(as py-faster-rcnn and DOTA_devkit build them) of the largest precision at recall ``>= t``
(0 when none). ``voc12`` (VOC2010 onward): the area under the monotone precision envelope,
summed where recall changes. A class without countable ground truth has AP NaN and is left out
of the mAP (the devkits would divide by zero).

The matching is the devkit's loop compiled with numba (classes in parallel, each detection
scanning only its image's ground truth), so a COCO-scale evaluation (5,000 images, 450k
detections) takes a fraction of a second; ``benchmarks/eval.py`` compares it with the devkit's
Python loop and checks that every AP agrees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numba
import numpy as np

from danlu.errors import ConfigError
from danlu.evaluate._common import (
    Flat,
    align_predictions,
    check_iou_threshold,
    check_labels,
    flatten,
)
from danlu.evaluate.result import EvalResult
from danlu.structures import Dataset, Detections

Match = Literal[">=", ">"]

_EPS = np.finfo(np.float64).eps


def average_precision(recall: np.ndarray, precision: np.ndarray, *,
                      eleven_point: bool = False) -> float:
    """AP of one precision/recall curve (points in decreasing score order).

    Args:
        recall, precision: ``[N]`` arrays; recall non-decreasing.
        eleven_point: VOC2007: mean of the largest precision at recall ``>= t`` for
            ``t in np.arange(0, 1.1, 0.1)`` (0 when no point reaches ``t``). Otherwise VOC2010+:
            the area under the precision envelope (``p(r) = max(precision[recall >= r])``),
            summed at the recalls where the curve moves.

    Returns:
        The AP as a float.

    Example:
        >>> import numpy as np
        >>> rec, prec = np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])
        >>> round(average_precision(rec, prec), 4)
        0.8333
        >>> round(average_precision(rec, prec, eleven_point=True), 4)
        0.8485
    """
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if eleven_point:
        # Largest precision at or after each point; recall is sorted, so the first point with
        # recall >= t starts the set the devkit takes the max over.
        suffix = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            i = int(np.searchsorted(recall, t, side="left"))
            p = suffix[i] if i < len(recall) else 0.0
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@numba.njit(cache=True, nogil=True, parallel=True)
def _sort_detections(labels: np.ndarray, scores: np.ndarray,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices by (class, decreasing score, input order): a stable counting sort on the class,
    then a stable merge sort on the score within each class (classes in parallel). Returns the
    order and the class boundaries ``[C + 1]`` in it."""
    n = labels.shape[0]
    start = np.zeros(num_classes + 1, np.int64)
    for i in range(n):
        start[labels[i] + 1] += 1
    for c in range(num_classes):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    by_class = np.empty(n, np.int64)
    for i in range(n):
        c = labels[i]
        by_class[fill[c]] = i
        fill[c] += 1
    order = np.empty(n, np.int64)
    for c in numba.prange(num_classes):
        s, e = start[c], start[c + 1]
        if e > s:
            idx = by_class[s:e]
            o = np.argsort(-scores[idx], kind="mergesort")
            order[s:e] = idx[o]
    return order, start


@numba.njit(cache=True, nogil=True)
def _decide(ovmax: float, jmax: int, thresh: float, strict: bool, difficult: np.ndarray,
            taken: np.ndarray) -> int:
    """The devkit's verdict for one detection: 1 TP, 0 FP, -1 neither (difficult)."""
    hit = jmax >= 0 and (ovmax > thresh if strict else ovmax >= thresh)
    if not hit:
        return 0
    if difficult[jmax]:
        return -1
    if taken[jmax]:
        return 0
    taken[jmax] = True
    return 1


@numba.njit(cache=True, nogil=True, parallel=True)
def _match_boxes(order: np.ndarray, class_start: np.ndarray, d_label: np.ndarray,
                 d_image: np.ndarray, d_box: np.ndarray, g_start: np.ndarray,
                 g_label: np.ndarray, g_box: np.ndarray, difficult: np.ndarray, thresh: float,
                 strict: bool, plus_one: float) -> np.ndarray:
    """The devkit loop over detections in ``order`` with the box IoU computed inline, in the
    devkits' arithmetic (see :func:`box_iou_pairs`). Classes share no ground truth, so they
    run in parallel."""
    n = order.shape[0]
    out = np.zeros(n, np.int8)
    taken = np.zeros(g_box.shape[0], np.bool_)
    for c in numba.prange(class_start.shape[0] - 1):
        for k in range(class_start[c], class_start[c + 1]):
            i = order[k]
            label = d_label[i]
            x1, y1, x2, y2 = d_box[i, 0], d_box[i, 1], d_box[i, 2], d_box[i, 3]
            area_d = (x2 - x1 + plus_one) * (y2 - y1 + plus_one)
            ovmax = -1.0
            jmax = -1
            for j in range(g_start[d_image[i]], g_start[d_image[i] + 1]):
                if g_label[j] != label:
                    continue
                iw = max(min(x2, g_box[j, 2]) - max(x1, g_box[j, 0]) + plus_one, 0.0)
                ih = max(min(y2, g_box[j, 3]) - max(y1, g_box[j, 1]) + plus_one, 0.0)
                inter = iw * ih
                union = area_d + (g_box[j, 2] - g_box[j, 0] + plus_one) * (
                    g_box[j, 3] - g_box[j, 1] + plus_one) - inter
                ov = inter / union if union > 0 else 0.0
                if ov > ovmax:
                    ovmax = ov
                    jmax = j
            out[k] = _decide(ovmax, jmax, thresh, strict, difficult, taken)
    return out


@numba.njit(cache=True, nogil=True)
def _overlapping_pairs(order: np.ndarray, d_label: np.ndarray, d_image: np.ndarray,
                       d_box: np.ndarray, g_start: np.ndarray, g_label: np.ndarray,
                       g_box: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each detection in ``order``: the ground truth of its image and class (in input order)
    whose box overlaps its box with positive area. Returns ``offsets`` ``[D + 1]``, ``pair_det``
    and ``pair_gt``."""
    n = order.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    for step in range(2):
        if step == 1:
            pair_det = np.empty(offsets[n], np.int64)
            pair_gt = np.empty(offsets[n], np.int64)
        for k in range(n):
            i = order[k]
            m = offsets[k]
            for j in range(g_start[d_image[i]], g_start[d_image[i] + 1]):
                if g_label[j] != d_label[i]:
                    continue
                if (min(d_box[i, 2], g_box[j, 2]) > max(d_box[i, 0], g_box[j, 0])
                        and min(d_box[i, 3], g_box[j, 3]) > max(d_box[i, 1], g_box[j, 1])):
                    if step == 0:
                        offsets[k + 1] += 1
                    else:
                        pair_det[m] = i
                        pair_gt[m] = j
                        m += 1
        if step == 0:
            for k in range(n):
                offsets[k + 1] += offsets[k]
    return offsets, pair_det, pair_gt


@numba.njit(cache=True, nogil=True)
def _greedy_match(offsets: np.ndarray, pair_gt: np.ndarray, ious: np.ndarray,
                  difficult: np.ndarray, thresh: float, strict: bool,
                  num_gt: int) -> np.ndarray:
    """The devkit loop over sorted detections with precomputed candidate IoUs: detection ``k``
    has pairs ``offsets[k]:offsets[k + 1]`` (ground truth in input order)."""
    n = offsets.shape[0] - 1
    out = np.zeros(n, np.int8)
    taken = np.zeros(num_gt, np.bool_)
    for k in range(n):
        ovmax = -1.0
        jmax = -1
        for p in range(offsets[k], offsets[k + 1]):
            if ious[p] > ovmax:
                ovmax = ious[p]
                jmax = pair_gt[p]
        out[k] = _decide(ovmax, jmax, thresh, strict, difficult, taken)
    return out


def box_iou_pairs(a: np.ndarray, b: np.ndarray, *, plus_one: float = 0.0) -> np.ndarray:
    """IoU of ``a[k]`` with ``b[k]`` for ``[K, 4]`` xyxy boxes, in float64, as the devkits write
    it: ``iw * ih / (area_a + area_b - iw * ih)`` with ``iw = max(min(x2) - max(x1) + plus_one,
    0)``; ``plus_one=1`` gives the inclusive-pixel IoU of DOTA_devkit's task 2."""
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + plus_one, 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + plus_one, 0.0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + plus_one) * (a[:, 3] - a[:, 1] + plus_one)
    area_b = (b[:, 2] - b[:, 0] + plus_one) * (b[:, 3] - b[:, 1] + plus_one)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou


def voc_style_ap(gt: Flat, dt: Flat, *, num_images: int, class_names: Sequence[str],
                 iou: float, match: Match, eleven_point: bool, protocol: str, params: dict,
                 plus_one: float = 0.0,
                 polygon_iou: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None
                 ) -> EvalResult:
    """The VOC / DOTA matching and AP over flat arrays.

    Box IoU (with ``plus_one`` added to widths and heights) is computed inside the matching
    loop; with ``polygon_iou(det_idx, gt_idx)`` the pairs whose enclosing boxes overlap are
    listed first and their IoUs computed in one call.
    """
    if match not in (">=", ">"):
        raise ConfigError(f"match must be '>=' or '>', not {match!r}")
    iou = check_iou_threshold(iou)
    num_classes = len(class_names)
    # crowd / ignore ground truth counts as difficult: matched detections are not counted.
    difficult = gt.difficult | gt.ignore | gt.crowd
    order, class_start = _sort_detections(dt.labels, dt.scores, num_classes)
    # Flat arrays are in image order: the ground truth of image i is g_start[i]:g_start[i + 1].
    g_start = np.searchsorted(gt.image, np.arange(num_images + 1), side="left")
    strict = match == ">"
    if polygon_iou is None:
        state = _match_boxes(order, class_start, dt.labels, dt.image, dt.xyxy, g_start,
                             gt.labels, gt.xyxy, difficult, iou, strict, float(plus_one))
    else:
        offsets, pair_det, pair_gt = _overlapping_pairs(order, dt.labels, dt.image, dt.xyxy,
                                                        g_start, gt.labels, gt.xyxy)
        ious = polygon_iou(pair_det, pair_gt) if len(pair_gt) else np.zeros(0)
        state = _greedy_match(offsets, pair_gt, np.ascontiguousarray(ious, np.float64),
                              difficult, iou, strict, len(gt))
    counted = state >= 0
    labels_sorted = dt.labels[order][counted]
    tp = (state[counted] == 1).astype(np.float64)
    fp = 1.0 - tp
    npos = np.bincount(gt.labels[~difficult], minlength=num_classes)[:num_classes]
    starts = np.searchsorted(labels_sorted, np.arange(num_classes + 1))
    per_class: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c, name in enumerate(class_names):
        s, e = starts[c], starts[c + 1]
        ctp, cfp = np.cumsum(tp[s:e]), np.cumsum(fp[s:e])
        if npos[c] == 0:
            per_class[name] = float("nan")
            curves[name] = (np.zeros(0), np.zeros(0))
            continue
        rec = ctp / float(npos[c])
        prec = ctp / np.maximum(ctp + cfp, _EPS)
        per_class[name] = average_precision(rec, prec, eleven_point=eleven_point)
        curves[name] = (rec, prec)
    aps = np.array([v for v in per_class.values() if not np.isnan(v)])
    m_ap = float(np.mean(aps)) if len(aps) else float("nan")
    return EvalResult(
        protocol=protocol, class_names=list(class_names), stats=np.array([m_ap]),
        metrics={"mAP": m_ap}, per_class=per_class,
        num_gt={name: int(npos[c]) for c, name in enumerate(class_names)},
        curves=curves, params=params)


def evaluate_voc(gt: Dataset, predictions: Dataset | Sequence[Detections], *,
                 metric: Literal["voc07", "voc12"] = "voc12", iou: float = 0.5,
                 match: Match = ">=") -> EvalResult:
    """Pascal VOC mAP and per-class AP (see the module docstring for the exact rules).

    Args:
        gt: ground truth; ``difficult`` boxes (and ``ignore`` / ``iscrowd`` ones) are neither
            needed nor penalized.
        predictions: one ``Detections`` with scores per ground-truth sample (a list in
            order, or a ``Dataset`` matched by sample id).
        metric: ``"voc07"`` (11-point) or ``"voc12"`` (all-point, VOC2010 onward).
        iou: the matching IoU threshold, in (0, 1].
        match: ``">="`` (the MATLAB devkit, default) or ``">"`` (py-faster-rcnn's voc_eval.py).

    Returns:
        :class:`EvalResult` with ``mAP``, ``per_class`` AP, ``num_gt`` and PR ``curves``.

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Dataset, Detections, Sample
        >>> gt = Dataset([Sample(None, 100, 100, Detections([[10, 10, 50, 50]], [0]), id=0)],
        ...              ["cat"])
        >>> pred = [Detections([[12, 10, 50, 52], [60, 60, 90, 90]], [0, 0], scores=[0.9, 0.8])]
        >>> round(evaluate_voc(gt, pred).mAP, 6)
        1.0
    """
    if metric not in ("voc07", "voc12"):
        raise ConfigError(f"metric must be 'voc07' or 'voc12', not {metric!r}")
    preds = align_predictions(gt, predictions)
    g = flatten(gt.detections())
    d = flatten(preds, scores=True)
    check_labels(g, len(gt.class_names), gt, "ground truth")
    check_labels(d, len(gt.class_names), gt, "predictions")
    return voc_style_ap(g, d, num_images=len(gt), class_names=gt.class_names,
                        iou=iou, match=match, eleven_point=metric == "voc07", protocol=metric,
                        params={"metric": metric, "iou": iou, "match": match})


__all__ = ["evaluate_voc", "average_precision", "box_iou_pairs"]
