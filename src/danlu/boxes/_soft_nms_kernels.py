"""Numba kernels of Soft-NMS: a lazy max-heap over the current scores plus the grid index.

The grid and the conventions are described in :mod:`danlu.boxes._grid`. Arithmetic is float64
in ensemble-boxes' operation order.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from danlu.boxes._grid import JIT, build_grid, candidates


@nb.njit(inline="always", **JIT)
def _iou_f64(b, i, j):
    """IoU of boxes i and j in float64 with ensemble-boxes' operation order (for Soft-NMS)."""
    xx1 = max(b[i, 0], b[j, 0])
    yy1 = max(b[i, 1], b[j, 1])
    xx2 = min(b[i, 2], b[j, 2])
    yy2 = min(b[i, 3], b[j, 3])
    w = max(0.0, xx2 - xx1)
    h = max(0.0, yy2 - yy1)
    inter = w * h
    ai = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
    aj = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
    return inter / (ai + aj - inter)


@nb.njit(inline="always", **JIT)
def _decay(ovr, linear, nt, sigma):
    """The Soft-NMS weight for one overlap value (ensemble-boxes' formulas)."""
    if linear:
        return 1.0 - ovr if ovr > nt else 1.0
    return np.exp(-(ovr * ovr) / sigma)


@nb.njit(inline="always", **JIT)
def _before(sa, ia, sb, ib):
    """Heap order: higher score first, then lower id."""
    return sa > sb or (sa == sb and ia < ib)


@nb.njit(**JIT)
def _soft_group_plain(b, cur, s, e, linear, nt, sigma, proper, pick_order):
    """Soft-NMS on ``[s, e)`` by the definition: O(n^2), for layouts the grid refuses."""
    n = e - s
    picked = np.zeros(n, np.bool_)
    for step in range(n):
        best = -1
        for k in range(n):
            if not picked[k] and (best < 0 or _before(cur[s + k], k, cur[s + best], best)):
                best = k
        picked[best] = True
        pick_order[s + step] = s + best
        if not proper[best]:
            continue
        for k in range(n):
            if not picked[k] and proper[k]:
                ovr = _iou_f64(b, s + best, s + k)
                if ovr > 0.0:
                    cur[s + k] = _decay(ovr, linear, nt, sigma) * cur[s + k]


@nb.njit(inline="always", **JIT)
def _sift_down(hs, hi, size, p):
    while True:
        c = 2 * p + 1
        if c >= size:
            return
        if c + 1 < size and _before(hs[c + 1], hi[c + 1], hs[c], hi[c]):
            c += 1
        if not _before(hs[c], hi[c], hs[p], hi[p]):
            return
        hs[p], hs[c] = hs[c], hs[p]
        hi[p], hi[c] = hi[c], hi[p]
        p = c


@nb.njit(**JIT)
def _soft_group_grid(b, cur, s, e, linear, nt, sigma, pick_order):
    """Soft-NMS on ``[s, e)`` with a lazy max-heap and the grid.

    The box picked next is the one with the highest current score (ties: lower id). Only boxes
    sharing a cell with it can overlap it, and only overlapping boxes are decayed (the weight is
    exactly 1 otherwise), so the decays applied, and their order, are the plain algorithm's.

    The heap holds each unpicked box once, keyed by a score that is >= its current score (decays
    only lower scores). A popped key that is out of date is put back with the current score;
    an up-to-date key at the top is a true maximum, because every other key bounds its box's
    current score from above. So a decay costs O(1), not a heap update.
    """
    n = e - s
    ok, gx, start, entries, cx1, cy1, cx2, cy2, proper = build_grid(b, s, e)
    if not ok:
        _soft_group_plain(b, cur, s, e, linear, nt, sigma, proper, pick_order)
        return
    hs = np.empty(n, np.float64)
    hi = np.empty(n, np.int64)
    for k in range(n):
        hs[k] = cur[s + k]
        hi[k] = k
    size = n
    for root in range(size // 2 - 1, -1, -1):
        _sift_down(hs, hi, size, root)
    picked = np.zeros(n, np.bool_)
    stamp = np.full(n, -1, np.int64)
    buf = np.empty(n, np.int64)
    step = 0
    while size > 0:
        top = hi[0]
        if hs[0] != cur[s + top]:
            hs[0] = cur[s + top]  # out of date: re-key and let it sink
            _sift_down(hs, hi, size, 0)
            continue
        size -= 1
        hs[0] = hs[size]
        hi[0] = hi[size]
        _sift_down(hs, hi, size, 0)
        picked[top] = True
        pick_order[s + step] = s + top
        step += 1
        m = candidates(True, n, top, -1, gx, start, entries, cx1, cy1, cx2, cy2, proper, stamp,
                       buf)
        for t in range(m):
            q = buf[t]
            if picked[q]:
                continue
            ovr = _iou_f64(b, s + top, s + q)
            if ovr > 0.0:
                cur[s + q] = _decay(ovr, linear, nt, sigma) * cur[s + q]


@nb.njit(**JIT)
def soft_nms_sorted(b, scores, starts, linear, nt, sigma):
    """Soft-NMS per group on float64 boxes grouped by label.

    Returns ``(order, decayed)``: ``order[s:e]`` is group ``[s, e)``'s pick order (positions
    in ``b``) and ``decayed[k]`` is box ``k``'s score after all decays.
    """
    cur = scores.copy()
    order = np.empty(b.shape[0], np.int64)
    for g in range(starts.shape[0] - 1):
        _soft_group_grid(b, cur, starts[g], starts[g + 1], linear, nt, sigma, order)
    return order, cur
