"""numba kernel of pycocotools' ``evaluateImg`` for boxes: the matching of one (image,
category), and the ``xywh`` boxes it reads.

Conventions (pycocotools' ``COCOeval``, ``iouType="bbox"``): boxes are ``xywh`` float64; the
IoU is ``bbIou``'s arithmetic (``w = min(x_d + w_d, x_g + w_g) - max(x_d, x_g)``, 0 unless
``> 0``, ``h`` likewise, ``inter / (area_d + area_g - inter)`` with box areas ``w * h``, and
``inter / area_d`` for a crowd ground truth); see :func:`match_group` for the matching.
"""

from __future__ import annotations

import numba
import numpy as np

TP, IGNORED = 1, 2  # a detection's state at one (area range, threshold); 0: unmatched
MAX_IOU = 1.0 - 1e-10  # pycocotools caps each threshold at 1 - 1e-10


@numba.njit(cache=True, nogil=True)
def xywh_and_area(xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 4]`` xyxy -> float64 ``xywh`` (``w = x2 - x1``) and the area ``w * h``, as
    pycocotools computes both from the ``xywh`` it is given."""
    n = xyxy.shape[0]
    box = np.empty((n, 4))
    area = np.empty(n)
    for i in range(n):
        x1, y1 = np.float64(xyxy[i, 0]), np.float64(xyxy[i, 1])
        w, h = np.float64(xyxy[i, 2]) - x1, np.float64(xyxy[i, 3]) - y1
        box[i, 0], box[i, 1], box[i, 2], box[i, 3] = x1, y1, w, h
        area[i] = w * h
    return box, area


@numba.njit(cache=True, nogil=True)
def match_group(gi: np.ndarray, g0: int, ng: int, di: np.ndarray, d0: int, nd: int,
                 g_box: np.ndarray, g_area: np.ndarray, g_crowd: np.ndarray,
                 g_ignore: np.ndarray, d_box: np.ndarray, d_area: np.ndarray,
                 iou_thrs: np.ndarray, area_rng: np.ndarray, state: np.ndarray,
                 best_iou: np.ndarray, npig: np.ndarray, ious: np.ndarray, gorder: np.ndarray,
                 gig: np.ndarray, gtm: np.ndarray, gflags: np.ndarray) -> None:
    """``evaluateImg`` for one (image, category): ground truth ``gi[g0:g0 + ng]`` (input order),
    detections ``di[d0:d0 + nd]`` (sorted, truncated).

    Writes ``best_iou[d0 + j]``, the largest IoU of detection ``j`` with any ground truth of
    the group (-inf when there is none), and adds the counted ground truth of each area range
    to ``npig[a]``. A match sets ``state[d0 + j, a * T + t]`` (zero-initialized) to TP, or to
    ignored when the ground truth is ignored; an unmatched detection keeps 0: a FP, or ignored
    outside the area range. Only a detection with ``best_iou >= min(t, 1 - 1e-10)`` can match
    at threshold ``t``. ``ious``, ``gorder``, ``gig``, ``gtm`` and ``gflags`` are scratch
    buffers of at least ``nd * ng`` / ``ng`` / ``ng`` / ``ng`` / ``A * ng`` entries.
    """
    num_t = iou_thrs.shape[0]
    lowest = np.inf
    for t in range(num_t):
        lowest = min(lowest, min(iou_thrs[t], MAX_IOU))
    # IoU as bbIou computes it, detections by rows.
    any_candidate = False
    for j in range(nd):
        d = di[d0 + j]
        dx, dy, dw, dh = d_box[d, 0], d_box[d, 1], d_box[d, 2], d_box[d, 3]
        da = dw * dh
        top = -np.inf
        for q in range(ng):
            g = gi[g0 + q]
            gx, gy, gw, gh = g_box[g, 0], g_box[g, 1], g_box[g, 2], g_box[g, 3]
            o = 0.0
            w = min(dw + dx, gw + gx) - max(dx, gx)
            if w > 0.0:
                h = min(dh + dy, gh + gy) - max(dy, gy)
                if h > 0.0:
                    inter = w * h
                    if g_crowd[g]:
                        o = inter / da
                    else:
                        o = inter / (da + gw * gh - inter)
            ious[j * ng + q] = o
            top = max(top, o)
        best_iou[d0 + j] = top
        any_candidate = any_candidate or top >= lowest
    for a in range(area_rng.shape[0]):
        lo, hi = area_rng[a, 0], area_rng[a, 1]
        counted = 0
        for q in range(ng):
            g = gi[g0 + q]
            ignored = g_crowd[g] or g_ignore[g] or g_area[g] < lo or g_area[g] > hi
            gflags[a * ng + q] = ignored
            counted += 0 if ignored else 1
        npig[a] += counted
        if not any_candidate:
            continue
        # The matching depends on the area range only through the ignored ground truth: an
        # earlier range that ignores the same ones has the same matches.
        same = -1
        for b in range(a):
            equal = True
            for q in range(ng):
                if gflags[b * ng + q] != gflags[a * ng + q]:
                    equal = False
                    break
            if equal:
                same = b
                break
        if same >= 0:
            for j in range(d0, d0 + nd):
                for t in range(num_t):
                    state[j, a * num_t + t] = state[j, same * num_t + t]
            continue
        # Ground truth order: counted first, then ignored, each in input order.
        m = 0
        for second in range(2):
            for q in range(ng):
                if gflags[a * ng + q] == (second == 1):
                    gorder[m] = q
                    gig[m] = second == 1
                    m += 1
        for t in range(num_t):
            row = a * num_t + t
            for q in range(ng):
                gtm[q] = False
            thr = min(iou_thrs[t], MAX_IOU)
            for j in range(nd):
                if best_iou[d0 + j] < thr:
                    continue  # matches nothing, takes nothing
                best = thr
                hit = -1
                for q in range(ng):
                    g = gi[g0 + gorder[q]]
                    if gtm[q] and not g_crowd[g]:
                        continue
                    if hit > -1 and not gig[hit] and gig[q]:
                        break
                    o = ious[j * ng + gorder[q]]
                    if o < best:
                        continue
                    best = o
                    hit = q
                if hit > -1:
                    gtm[hit] = True
                    state[d0 + j, row] = IGNORED if gig[hit] else TP


__all__ = ["match_group", "xywh_and_area", "TP", "IGNORED", "MAX_IOU"]
