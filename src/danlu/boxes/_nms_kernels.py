"""Numba kernels of hard NMS, IoU-guided NMS and polygon NMS's candidate search.

The grid index and the conventions (processing order, group slices, exactness) are described
in :mod:`danlu.boxes._grid`. IoU here is torchvision's CPU kernel's, operation for operation.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from danlu.boxes._grid import JIT, build_grid, positive_overlap


@nb.njit(inline="always", **JIT)
def _iou_tv(ix1, iy1, ix2, iy2, iarea, b, areas, j, zero):
    """IoU exactly as torchvision's CPU kernel computes it (same operations, order and dtype).

    ``std::max(a, b)`` is ``a < b ? b : a`` and ``std::min(a, b)`` is ``b < a ? b : a``; NaN
    coordinates therefore resolve the same way as there.
    """
    jx1 = b[j, 0]
    jy1 = b[j, 1]
    jx2 = b[j, 2]
    jy2 = b[j, 3]
    xx1 = jx1 if ix1 < jx1 else ix1
    yy1 = jy1 if iy1 < jy1 else iy1
    xx2 = jx2 if jx2 < ix2 else ix2
    yy2 = jy2 if jy2 < iy2 else iy2
    w = xx2 - xx1
    h = yy2 - yy1
    w = w if zero < w else zero
    h = h if zero < h else zero
    inter = w * h
    return inter / (iarea + areas[j] - inter)


@nb.njit(**JIT)
def _nms_group_plain(b, areas, s, e, thr, keep, cls, out, track):
    """torchvision's O(N*K) loop on the slice ``[s, e)`` (already in rank order)."""
    zero = np.zeros(1, b.dtype)[0]  # a zero of the boxes' dtype
    n = e - s
    supp = np.zeros(n, np.bool_)
    for p in range(n):
        if supp[p]:
            continue
        keep[s + p] = True
        best = cls[s + p]
        ix1 = b[s + p, 0]
        iy1 = b[s + p, 1]
        ix2 = b[s + p, 2]
        iy2 = b[s + p, 3]
        ia = areas[s + p]
        for q in range(p + 1, n):
            if supp[q]:
                continue
            if _iou_tv(ix1, iy1, ix2, iy2, ia, b, areas, s + q, zero) > thr:
                supp[q] = True
                if track and cls[s + q] > best:
                    best = cls[s + q]
        out[s + p] = best


@nb.njit(**JIT)
def _nms_group_grid(b, areas, s, e, thr, keep, cls, out, track):
    """Greedy NMS on the slice ``[s, e)`` looking only at boxes sharing a grid cell.

    Returns False (having done nothing) when the grid is refused; the caller then runs the
    plain loop. Only valid for ``thr >= 0`` or NaN (see :mod:`danlu.boxes._grid`). Unlike the
    other families it keeps a per-cell head pointer instead of using ``candidates``: entries
    behind the head are settled for good, which keeps dense cells cheap.
    """
    n = e - s
    ok, gx, start, entries, cx1, cy1, cx2, cy2, proper = build_grid(b, s, e)
    if not ok:
        return False
    zero = np.zeros(1, b.dtype)[0]
    supp = np.zeros(n, np.bool_)
    stamp = np.full(n, -1, np.int64)
    # head[c]: first entry of cell c that may still be tested; entries before it are already
    # kept or suppressed, and since ids in a cell increase and p only grows, they stay so
    head = start[:-1].copy()
    for p in range(n):
        if supp[p]:
            continue
        keep[s + p] = True
        best = cls[s + p]
        if proper[p]:
            ix1 = b[s + p, 0]
            iy1 = b[s + p, 1]
            ix2 = b[s + p, 2]
            iy2 = b[s + p, 3]
            ia = areas[s + p]
            for cy in range(cy1[p], cy2[p] + 1):
                for cx in range(cx1[p], cx2[p] + 1):
                    c = cy * gx + cx
                    h = head[c]
                    end = start[c + 1]
                    while h < end and (entries[h] <= p or supp[entries[h]]):
                        h += 1
                    head[c] = h
                    for t in range(h, end):
                        q = entries[t]
                        if supp[q] or stamp[q] == p:
                            continue
                        stamp[q] = p  # a box covering several of these cells is tested once
                        if _iou_tv(ix1, iy1, ix2, iy2, ia, b, areas, s + q, zero) > thr:
                            supp[q] = True
                            if track and cls[s + q] > best:
                                best = cls[s + q]
        out[s + p] = best
    return True


@nb.njit(**JIT)
def nms_sorted(b, starts, thr, cls, track):
    """Hard NMS per group on boxes in processing order.

    Args:
        b: ``[N, 4]`` float32/float64 boxes sorted by group, then by rank within the group.
        starts: ``[G + 1]`` group boundaries.
        thr: suppress when IoU > thr.
        cls: ``[N]`` scores whose cluster maximum is tracked when ``track`` (IoU-guided NMS).

    Returns:
        ``(keep [N] bool, out [N])``: kept flags, and for kept boxes the maximum of ``cls`` over
        the box and the boxes it suppressed (only meaningful when ``track``).
    """
    n = b.shape[0]
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = np.zeros(n, np.bool_)
    out = cls.copy()
    for g in range(starts.shape[0] - 1):
        s = starts[g]
        e = starts[g + 1]
        done = False
        if not (thr < 0):
            done = _nms_group_grid(b, areas, s, e, thr, keep, cls, out, track)
        if not done:
            _nms_group_plain(b, areas, s, e, thr, keep, cls, out, track)
    return keep, out


@nb.njit(**JIT)
def _one_cell(proper):
    """A grid of one cell holding every proper box, in increasing id order: the plain loop in
    the grid's terms, for groups :func:`build_grid` refuses. Returns what it returns."""
    n = proper.shape[0]
    entries = np.flatnonzero(proper).astype(np.int32)
    start = np.array([0, entries.shape[0]], np.int64)
    zeros = np.zeros(n, np.int32)
    return 1, start, entries, zeros, zeros, zeros, zeros


@nb.njit(**JIT)
def overlap_pairs(b, starts):
    """All pairs ``(p, q)``, ``p < q`` in the same group, whose boxes share positive area.

    ``b`` holds the enclosing boxes in processing order. Returns ``(first, second)`` positions,
    sorted by ``first``. Groups the grid refuses are compared pair by pair.
    """
    cap = 4 * b.shape[0] + 16
    first = np.empty(cap, np.int64)
    second = np.empty(cap, np.int64)
    m = 0
    for g in range(starts.shape[0] - 1):
        s = starts[g]
        e = starts[g + 1]
        n = e - s
        ok, gx, start, entries, cx1, cy1, cx2, cy2, proper = build_grid(b, s, e)
        if not ok:
            gx, start, entries, cx1, cy1, cx2, cy2 = _one_cell(proper)
        stamp = np.full(n, -1, np.int64)
        for p in range(n):
            if not proper[p]:
                continue
            for cy in range(cy1[p], cy2[p] + 1):
                for cx in range(cx1[p], cx2[p] + 1):
                    cell = cy * gx + cx
                    for t in range(start[cell], start[cell + 1]):
                        q = entries[t]
                        if q <= p or stamp[q] == p:
                            continue
                        stamp[q] = p
                        if not positive_overlap(b, s + p, s + q):
                            continue
                        if m == cap:
                            cap *= 2
                            f2 = np.empty(cap, np.int64)
                            s2 = np.empty(cap, np.int64)
                            f2[:m] = first[:m]
                            s2[:m] = second[:m]
                            first = f2
                            second = s2
                        first[m] = s + p
                        second[m] = s + q
                        m += 1
    return first[:m], second[:m]


@nb.njit(**JIT)
def greedy_from_pairs(n, first, second, iou, thr):
    """Greedy NMS given the IoU of candidate pairs (sorted by ``first``); kept flags [n]."""
    keep = np.zeros(n, np.bool_)
    supp = np.zeros(n, np.bool_)
    t = 0
    m = first.shape[0]
    for p in range(n):
        if supp[p]:
            while t < m and first[t] == p:
                t += 1
            continue
        keep[p] = True
        while t < m and first[t] == p:
            if iou[t] > thr:
                supp[second[t]] = True
            t += 1
    return keep
