"""numba kernels of pycocotools' ``accumulate`` for one category: the precision / recall
arrays from the matches of :mod:`danlu.evaluate._coco_match`.

Per (category, area range, max dets): the detections with a per-image rank below
``max_dets`` sorted by decreasing score, ties by image then rank (pycocotools' stable sort of
the per-image lists concatenated in image order); precision ``tp / (tp + fp + eps)``, recall
``tp / npig``; the precision envelope sampled at the recall thresholds with
``searchsorted(..., side="left")``, 0 past the last recall; -1 where ``npig == 0``.

The envelope needs the precision only where a true positive lands: between two true positives
the precision falls, so the running maximum from the right is always taken at one of them, and
the first point reaching a recall threshold is one too. The values are the same float64 numbers
pycocotools computes, in the same order of operations.
"""

from __future__ import annotations

import numba
import numpy as np

from danlu.evaluate._coco_match import MAX_IOU, TP

_EPS = float(np.spacing(1))  # pycocotools' np.spacing(1) in the precision's denominator


@numba.njit(cache=True, nogil=True)
def sample_envelope(pr: np.ndarray, count: int, total: float, rec_thrs: np.ndarray, out: np.ndarray
            ) -> None:
    """The precision envelope sampled at the recall thresholds into ``out`` ``[R]``, from the
    precision ``pr[j]`` at the ``count`` true positives (recall ``(j + 1) / total``): a
    threshold in ``(rc[j - 1], rc[j]]`` takes the largest precision from true positive ``j``
    on, a threshold above the last recall 0."""
    ri = rec_thrs.shape[0] - 1
    top = float(count) / total
    while ri >= 0 and rec_thrs[ri] > top:
        out[ri] = 0.0
        ri -= 1
    env = 0.0
    for j in range(count - 1, -1, -1):
        env = max(env, pr[j])
        lower = float(j) / total if j > 0 else -np.inf
        while ri >= 0 and rec_thrs[ri] > lower:
            out[ri] = env
            ri -= 1
    while ri >= 0:  # no true positive: recall 0, precision 0
        out[ri] = 0.0
        ri -= 1


@numba.njit(cache=True, nogil=True)
def accumulate(order: np.ndarray, rank: np.ndarray, area: np.ndarray, best_iou: np.ndarray,
                state: np.ndarray, npig: np.ndarray, iou_thrs: np.ndarray,
                area_rng: np.ndarray, max_dets: np.ndarray, rec_thrs: np.ndarray, k: int,
                precision: np.ndarray, recall: np.ndarray) -> None:
    """``accumulate`` for category ``k``: detections in ``order`` (decreasing score, then image,
    then rank) with their ``rank``, box ``area``, ``best_iou`` and ``state`` from
    :func:`~danlu.evaluate._coco_match.match_group`; fills ``precision[:, :, k]`` and
    ``recall[:, k]`` where ``npig[a] > 0``.

    Most detections match nothing: a FP inside the area range, ignored outside. Those FPs are
    counted once per (area range, max dets) as a prefix sum; each threshold then visits only
    its matches (the "events"), each a TP or an ignored detection, and corrects the FP count
    where one of them stands in for a FP.
    """
    num_t = iou_thrs.shape[0]
    num_a = area_rng.shape[0]
    num_m = max_dets.shape[0]
    rows = num_a * num_t
    n = order.shape[0]
    lowest = np.inf
    for t in range(num_t):
        lowest = min(lowest, min(iou_thrs[t], MAX_IOU))
    # The matches of each (area range, threshold), in score order.
    count = np.zeros(rows, np.int64)
    for p in range(n):
        i = order[p]
        if best_iou[i] >= lowest:
            for r in range(rows):
                if state[i, r] != 0:
                    count[r] += 1
    cap = 1
    for r in range(rows):
        cap = max(cap, count[r])
    events = np.empty((rows, cap), np.int64)
    count[:] = 0
    for p in range(n):
        i = order[p]
        if best_iou[i] >= lowest:
            for r in range(rows):
                if state[i, r] != 0:
                    events[r, count[r]] = p
                    count[r] += 1
    s_rank = np.empty(n, np.int64)
    s_area = np.empty(n)
    for p in range(n):
        s_rank[p] = rank[order[p]]
        s_area[p] = area[order[p]]
    plain_fp = np.empty(n + 1, np.int64)
    pr = np.empty(cap + 1)
    for a in range(num_a):
        if npig[a] == 0:
            continue
        total = float(npig[a])
        lo, hi = area_rng[a, 0], area_rng[a, 1]
        for m in range(num_m):
            md = max_dets[m]
            plain_fp[0] = 0
            for p in range(n):
                inside = s_rank[p] < md and not (s_area[p] < lo or s_area[p] > hi)
                plain_fp[p + 1] = plain_fp[p] + (1 if inside else 0)
            for t in range(num_t):
                row = a * num_t + t
                ntp = 0
                fix = 0  # FPs of the prefix sum that are matches
                for e in range(count[row]):
                    p = events[row, e]
                    if s_rank[p] >= md:
                        continue
                    if state[order[p], row] == TP:
                        tp = float(ntp + 1)
                        fp = float(plain_fp[p] - fix)
                        pr[ntp] = tp / (fp + tp + _EPS)
                        ntp += 1
                    if not (s_area[p] < lo or s_area[p] > hi):
                        fix += 1
                recall[t, k, a, m] = float(ntp) / total
                sample_envelope(pr, ntp, total, rec_thrs, precision[t, :, k, a, m])


__all__ = ["accumulate", "sample_envelope"]
