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

**How it runs.** A detection's verdict needs only its best-overlapping ground truth (there is
no fall-back to the second best), so that is found first, in image order (boxes read in memory
order, each detection against its image's ground truth), and reduced to what the verdict depends
on; the detections are then sorted by class (a counting sort) and, within each class, by
decreasing score (a stable radix sort), and the devkit's loop over them only looks those up.
numba kernels without numba's parallel loops; large inputs use two plain threads (halves of the
detections, then of the classes). A COCO-scale evaluation (5,000 images, 450k detections) takes
a few tens of milliseconds; ``benchmarks/eval.py`` compares it with the devkit's Python loop and
checks that every AP agrees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
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

# Threads for the overlap pass: two when the machine has them, for inputs large enough to pay
# for a thread (plain threads on a GIL-free kernel; numba's parallel loops spin under load).
_WORKERS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else (os.cpu_count() or 1))
_THREADED_MIN = 100_000
_EPS = float(np.finfo(np.float64).eps)
_SIGN = np.uint64(1 << 63)  # float64 bit fields, for the score keys
_EXP = np.uint64(0x7FF << 52)
_FRAC = np.uint64((1 << 52) - 1)


def average_precision(recall: np.ndarray, precision: np.ndarray, *,
                      eleven_point: bool = False) -> float:
    """AP of one precision/recall curve (points in decreasing score order).

    Args:
        recall: ``[N]`` array, non-decreasing.
        precision: ``[N]`` array, the precision at each recall.
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
        points = []
        for t in np.arange(0.0, 1.1, 0.1):
            i = int(np.searchsorted(recall, t, side="left"))
            points.append(float(suffix[i]) if i < len(recall) else 0.0)
        # the correctly rounded mean: the devkits' running ``ap += p / 11`` gives
        # 1.0000000000000002 for a perfect curve (within 1e-15 of this everywhere else)
        return math.fsum(points) / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@numba.njit(cache=True, nogil=True)
def _decide(ovmax: float, jmax: int, thresh: float, strict: bool, difficult: np.ndarray,
            taken: np.ndarray) -> int:
    """The devkit's verdict for one detection: 1 TP, 0 FP, -1 neither (difficult); the loop in
    :mod:`danlu.evaluate.dota` uses it."""
    hit = jmax >= 0 and (ovmax > thresh if strict else ovmax >= thresh)
    if not hit:
        return 0
    if difficult[jmax]:
        return -1
    if taken[jmax]:
        return 0
    taken[jmax] = True
    return 1


@numba.njit(cache=True, nogil=True)
def _target(ovmax: float, jmax: int, thresh: float, strict: bool, difficult: np.ndarray
            ) -> int:
    """What a detection's verdict depends on, given its best IoU and that ground truth: 0 (a
    miss: FP), 1 (a difficult ground truth: neither) or ``2 + jmax`` (TP unless that ground
    truth is already taken, then FP)."""
    if jmax < 0 or not (ovmax > thresh if strict else ovmax >= thresh):
        return 0
    return 1 if difficult[jmax] else 2 + jmax


@numba.njit(cache=True, nogil=True)
def _place(lo: int, hi: int, cursor: np.ndarray, d_label: np.ndarray, score_bits: np.ndarray,
           target: np.ndarray, keys: np.ndarray, targets: np.ndarray) -> None:
    """Write the score key and target of the detections ``lo:hi`` at the next slots of their
    class: a stable counting sort by class. The key increases as the score decreases (``-0.0``
    ties with ``0.0``; NaN after every number, as ``np.argsort(-scores, kind="stable")`` orders
    it)."""
    for i in range(lo, hi):
        b = score_bits[i]
        if b == _SIGN:
            b = np.uint64(0)  # -0.0
        if (b & _EXP) == _EXP and (b & _FRAC) != 0:
            key = ~np.uint64(0)  # NaN
        else:
            key = ~(~b if b & _SIGN else b | _SIGN)
        c = d_label[i]
        keys[cursor[c]] = key
        targets[cursor[c]] = target[i]
        cursor[c] += 1


@numba.njit(cache=True, nogil=True)
def _box_targets(lo: int, hi: int, d_image: np.ndarray, d_label: np.ndarray,
                 d_box: np.ndarray, g_start: np.ndarray, g_label: np.ndarray, g_box: np.ndarray,
                 plus_one: float, thresh: float, strict: bool, difficult: np.ndarray,
                 target: np.ndarray) -> None:
    """For the detections ``lo:hi`` (image order: boxes read in memory order): the ground
    truth of their image and class with the largest IoU (the first one on ties), reduced to
    :func:`_target`. The IoU is the devkits' arithmetic (see :func:`box_iou_pairs`)."""
    for i in range(lo, hi):
        label = d_label[i]
        x1, y1, x2, y2 = d_box[i, 0], d_box[i, 1], d_box[i, 2], d_box[i, 3]
        area_d = (x2 - x1 + plus_one) * (y2 - y1 + plus_one)
        best = -1.0
        arg = -1
        for j in range(g_start[d_image[i]], g_start[d_image[i] + 1]):
            if g_label[j] != label:
                continue
            iw = max(min(x2, g_box[j, 2]) - max(x1, g_box[j, 0]) + plus_one, 0.0)
            ih = max(min(y2, g_box[j, 3]) - max(y1, g_box[j, 1]) + plus_one, 0.0)
            inter = iw * ih
            union = area_d + (g_box[j, 2] - g_box[j, 0] + plus_one) * (
                g_box[j, 3] - g_box[j, 1] + plus_one) - inter
            ov = inter / union if union > 0 else 0.0
            if ov > best:
                best = ov
                arg = j
        target[i] = _target(best, arg, thresh, strict, difficult)


@numba.njit(cache=True, nogil=True)
def _overlapping_pairs(d_image: np.ndarray, d_label: np.ndarray, d_box: np.ndarray,
                       g_start: np.ndarray, g_label: np.ndarray, g_box: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, in input order: the ground truth of its image and class (in input
    order) whose box overlaps its own with positive area. Returns ``offsets`` ``[D + 1]`` and
    ``pair_gt``; detection ``i`` has the pairs ``offsets[i]:offsets[i + 1]``."""
    n = d_image.shape[0]
    offsets = np.zeros(n + 1, np.int64)
    pair_gt = np.empty(0, np.int64)
    for step in range(2):
        if step == 1:
            for i in range(n):
                offsets[i + 1] += offsets[i]
            pair_gt = np.empty(offsets[n], np.int64)
        for i in range(n):
            m = offsets[i]
            x1, y1, x2, y2 = d_box[i, 0], d_box[i, 1], d_box[i, 2], d_box[i, 3]
            for j in range(g_start[d_image[i]], g_start[d_image[i] + 1]):
                if (g_label[j] == d_label[i] and min(x2, g_box[j, 2]) > max(x1, g_box[j, 0])
                        and min(y2, g_box[j, 3]) > max(y1, g_box[j, 1])):
                    if step == 0:
                        offsets[i + 1] += 1
                    else:
                        pair_gt[m] = j
                        m += 1
    return offsets, pair_gt


@numba.njit(cache=True, nogil=True)
def _pair_targets(offsets: np.ndarray, pair_gt: np.ndarray, ious: np.ndarray, thresh: float,
                  strict: bool, difficult: np.ndarray, target: np.ndarray) -> None:
    """Each detection's pair with the largest IoU (the first one on ties), reduced to
    :func:`_target`."""
    for i in range(offsets.shape[0] - 1):
        best = -1.0
        arg = -1
        for p in range(offsets[i], offsets[i + 1]):
            if ious[p] > best:
                best = ious[p]
                arg = pair_gt[p]
        target[i] = _target(best, arg, thresh, strict, difficult)


@numba.njit(cache=True, nogil=True)
def _class_slots(labels: np.ndarray, num_classes: int, mid: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Class boundaries ``[C + 1]`` of the detections sorted by class, and the first slot of
    each class for the detections ``:mid`` (row 0) and ``mid:`` (row 1)."""
    count = np.zeros((2, num_classes), np.int64)
    for i in range(labels.shape[0]):
        count[0 if i < mid else 1, labels[i]] += 1
    start = np.zeros(num_classes + 1, np.int64)
    cursor = np.empty((2, num_classes), np.int64)
    for c in range(num_classes):
        cursor[0, c] = start[c]
        cursor[1, c] = start[c] + count[0, c]
        start[c + 1] = start[c] + count[0, c] + count[1, c]
    return start, cursor


@numba.njit(cache=True, nogil=True)
def _radix_sort(keys: np.ndarray, values: np.ndarray) -> None:
    """Sort ``keys`` increasing, and ``values`` with them, stably, in place: an LSD radix sort
    over the key bits that vary, in passes of at most 8 bits."""
    n = keys.shape[0]
    if n < 2:
        return
    diff = np.uint64(0)
    for i in range(n):
        diff |= keys[i] ^ keys[0]
    if diff == 0:
        return
    lo = 0
    while not (diff >> np.uint64(lo)) & np.uint64(1):
        lo += 1
    hi = 63
    while not (diff >> np.uint64(hi)) & np.uint64(1):
        hi -= 1
    passes = (hi - lo + 8) // 8
    width = (hi - lo + passes) // passes
    mask = np.uint64((1 << width) - 1)
    hist = np.zeros((passes, 1 << width), np.int64)
    for i in range(n):
        k = keys[i]
        for p in range(passes):
            hist[p, np.int64((k >> np.uint64(lo + p * width)) & mask)] += 1
    src_k, src_v = keys, values
    dst_k, dst_v = np.empty_like(keys), np.empty_like(values)
    for p in range(passes):
        start = hist[p]
        total = 0
        for v in range(1 << width):
            c = start[v]
            start[v] = total
            total += c
        shift = np.uint64(lo + p * width)
        for i in range(n):
            v = np.int64((src_k[i] >> shift) & mask)
            dst_k[start[v]] = src_k[i]
            dst_v[start[v]] = src_v[i]
            start[v] += 1
        src_k, dst_k = dst_k, src_k
        src_v, dst_v = dst_v, src_v
    if passes % 2:
        keys[:] = src_k
        values[:] = src_v


@numba.njit(cache=True, nogil=True)
def _class_curves(c_lo: int, c_hi: int, start: np.ndarray, keys: np.ndarray,
                  targets: np.ndarray, npos: np.ndarray, taken: np.ndarray, rec: np.ndarray,
                  prec: np.ndarray, count: np.ndarray) -> None:
    """The devkit's loop for the classes ``c_lo:c_hi`` (those without countable ground truth
    skipped): the class's detections sorted by decreasing score (ties in input order), each
    decided from its :func:`_target` alone, turned into recall ``tp / npos`` and precision
    ``tp / max(tp + fp, eps)`` at each counted detection, class ``c``'s written at
    ``start[c]:start[c] + count[c]``."""
    for c in range(c_lo, c_hi):
        count[c] = 0
        if npos[c] == 0:
            continue
        s, e = start[c], start[c + 1]
        _radix_sort(keys[s:e], targets[s:e])
        total = float(npos[c])
        tp = 0.0
        m = 0
        for k in range(s, e):
            t = targets[k]
            if t == 1:
                continue  # a difficult ground truth: neither TP nor FP
            if t >= 2 and not taken[t - 2]:
                taken[t - 2] = True
                tp += 1.0
            m += 1
            rec[s + m - 1] = tp / total
            prec[s + m - 1] = tp / max(float(m), _EPS)
        count[c] = m


def _curves(dt: Flat, gt: Flat, g_start: np.ndarray, num_classes: int, npos: np.ndarray,
            plus_one: float, thresh: float, strict: bool, difficult: np.ndarray,
            polygon_iou: Callable[[np.ndarray, np.ndarray], np.ndarray] | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The PR curves of all classes: ``rec``, ``prec``, and class ``c``'s points at
    ``start[c]:start[c] + count[c]`` in them; returns those and ``start``, ``count``.

    1. In image order (boxes read in memory order), each detection's best-overlapping ground
       truth, reduced to what its verdict depends on (there is no fall-back to the second
       best), placed with its score key in its class's slots (a stable counting sort);
    2. per class: a stable radix sort by decreasing score, then the devkit's loop over those.

    Each step runs on two plain threads (halves of the detections, then of the classes;
    GIL-free kernels, not numba's parallel loops, whose waiting threads spin) when the input
    is large enough. A ground truth belongs to one class, so classes share no state.
    """
    n = len(dt)
    threads = _WORKERS > 1 and n >= _THREADED_MIN
    mid = n // 2 if threads else n
    start, cursor = _class_slots(dt.labels, num_classes, mid)
    target = np.empty(n, np.int64)  # image order
    keys = np.empty(n, np.uint64)  # by class
    targets = np.empty(n, np.int64)
    score_bits = np.ascontiguousarray(dt.scores, np.float64).view(np.uint64)
    pool = ThreadPoolExecutor(1) if threads else None
    try:
        if polygon_iou is None:
            def run(lo: int, hi: int, row: int) -> None:
                _box_targets(lo, hi, dt.image, dt.labels, dt.xyxy, g_start, gt.labels, gt.xyxy,
                             plus_one, thresh, strict, difficult, target)
                _place(lo, hi, cursor[row], dt.labels, score_bits, target, keys, targets)

            if pool is None:
                run(0, n, 0)
            else:
                other = pool.submit(run, mid, n, 1)
                run(0, mid, 0)
                other.result()
        else:
            offsets, pair_gt = _overlapping_pairs(dt.image, dt.labels, dt.xyxy, g_start,
                                                  gt.labels, gt.xyxy)
            pair_det = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
            ious = polygon_iou(pair_det, pair_gt) if len(pair_gt) else np.zeros(0)
            _pair_targets(offsets, pair_gt, np.ascontiguousarray(ious, np.float64), thresh,
                          strict, difficult, target)
            _place(0, mid, cursor[0], dt.labels, score_bits, target, keys, targets)
            _place(mid, n, cursor[1], dt.labels, score_bits, target, keys, targets)
        rec, prec = np.empty(n), np.empty(n)
        count = np.zeros(num_classes, np.int64)
        taken = np.zeros(len(gt), np.bool_)

        def curves(c_lo: int, c_hi: int) -> None:
            _class_curves(c_lo, c_hi, start, keys, targets, npos, taken, rec, prec, count)

        if pool is None:
            curves(0, num_classes)
        else:
            # Split the classes where the detections are halved.
            c_mid = int(np.searchsorted(start, n // 2))
            other = pool.submit(curves, c_mid, num_classes)
            curves(0, c_mid)
            other.result()
    finally:
        if pool is not None:
            pool.shutdown()
    return rec, prec, start, count


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

    Box IoU (with ``plus_one`` added to widths and heights) is computed in the kernel that finds
    each detection's best ground truth; with ``polygon_iou(det_idx, gt_idx)`` the pairs whose
    boxes overlap are listed first and their IoUs computed in one call.
    """
    if match not in (">=", ">"):
        raise ConfigError(f"match must be '>=' or '>', not {match!r}")
    iou = check_iou_threshold(iou)
    num_classes = len(class_names)
    # crowd / ignore ground truth counts as difficult: matched detections are not counted.
    difficult = gt.difficult | gt.ignore | gt.crowd
    # Flat arrays are in image order: the ground truth of image i is g_start[i]:g_start[i + 1].
    g_start = np.searchsorted(gt.image, np.arange(num_images + 1), side="left")
    npos = np.bincount(gt.labels[~difficult], minlength=num_classes)[:num_classes]
    rec_all, prec_all, starts, counts = _curves(dt, gt, g_start, num_classes, npos,
                                                float(plus_one), iou, match == ">", difficult,
                                                polygon_iou)
    per_class: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for c, name in enumerate(class_names):
        if npos[c] == 0:
            per_class[name] = float("nan")
            curves[name] = (np.zeros(0), np.zeros(0))
            continue
        s, e = starts[c], starts[c] + counts[c]
        rec, prec = rec_all[s:e], prec_all[s:e]
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
