"""Numba kernels of non-maximum merging (SAHI's greedy NMM and NMM) and of its merge step.

The grid and the conventions are described in :mod:`danlu.boxes._grid`. Matching is
``metric >= thr``, so the grid (which only sees pairs with a positive intersection) is used for
``thr > 0`` only.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from danlu.boxes._grid import JIT, build_grid, candidates


@nb.njit(inline="always", **JIT)
def _match_value(b, areas, p, q, ios):
    """SAHI's match metric of box ``p`` (the reference) against ``q``, in the boxes' dtype.

    IoU is ``inter / ((area_q - inter) + area_p)``, IoS ``inter / min(area_q, area_p)``. A zero
    denominator gives 0 (SAHI gets NaN there, which then counts as a match).
    """
    xx1 = max(b[q, 0], b[p, 0])
    yy1 = max(b[q, 1], b[p, 1])
    xx2 = min(b[q, 2], b[p, 2])
    yy2 = min(b[q, 3], b[p, 3])
    w = max(xx2 - xx1, 0.0)
    h = max(yy2 - yy1, 0.0)
    inter = w * h
    if ios:
        den = min(areas[q], areas[p])
    else:
        den = (areas[q] - inter) + areas[p]
    if not (den > 0):
        return 0.0
    return inter / den


@nb.njit(**JIT)
def _neighbours(b, areas, s, thr, ios, grid, p, stamp, buf):
    """Local ids ``q != p`` of the group with ``metric(p, q) >= thr``, into ``buf``; the count.

    ``grid`` is ``(use_grid, gx, start, entries, cx1, cy1, cx2, cy2, proper)`` of the group.
    """
    use_grid, gx, start, entries, cx1, cy1, cx2, cy2, proper = grid
    k = candidates(use_grid, stamp.shape[0], p, -1, gx, start, entries, cx1, cy1, cx2, cy2,
                   proper, stamp, buf)
    m = 0
    for t in range(k):
        q = buf[t]
        if q != p and _match_value(b, areas, s + p, s + q, ios) >= thr:
            buf[m] = q  # m <= t: the write never overtakes the read
            m += 1
    return m


@nb.njit(**JIT)
def _assign(keeper, owner, pair_keep, pair_member, npairs, s, k, sel, after):
    """Hand the ids ``q > after`` of ``sel`` that are neither assigned nor keepers to keeper
    ``k`` (never ``k`` itself).

    Records each as a (keeper, member) pair at ``npairs``; returns the new pair count.
    """
    for t in range(sel.shape[0]):
        q = sel[t]
        if q <= after or owner[q] >= 0 or keeper[s + q] or q == k:
            continue
        owner[q] = k
        pair_keep[npairs] = s + k
        pair_member[npairs] = s + q
        npairs += 1
    return npairs


@nb.njit(**JIT)
def nmm_sorted(b, starts, thr, ios, greedy):
    """SAHI's greedy NMM (``greedy``) or NMM per group, on boxes in rank order.

    Matching is ``metric >= thr``. Returns ``(keeper, pair_keep, pair_member)``: ``keeper[k]``
    flags the kept boxes and the pairs list each keeper's merged members in SAHI's order
    (greedy: decreasing score; NMM: each matching step's boxes by increasing score, in the
    order the steps happen).
    """
    n = b.shape[0]
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keeper = np.zeros(n, np.bool_)
    pair_keep = np.empty(n, np.int64)
    pair_member = np.empty(n, np.int64)
    npairs = 0
    for g in range(starts.shape[0] - 1):
        s = starts[g]
        e = starts[g + 1]
        ng = e - s
        ok, gx, start, entries, cx1, cy1, cx2, cy2, proper = build_grid(b, s, e)
        grid = (thr > 0 and ok, gx, start, entries, cx1, cy1, cx2, cy2, proper)
        stamp = np.full(ng, -1, np.int64)
        buf = np.empty(ng, np.int64)
        owner = np.full(ng, -1, np.int64)  # the keeper a box was merged into
        for p in range(ng):
            if greedy:
                if owner[p] >= 0:
                    continue
                keeper[s + p] = True
                m = _neighbours(b, areas, s, thr, ios, grid, p, stamp, buf)
                sel = np.sort(buf[:m])
                npairs = _assign(keeper, owner, pair_keep, pair_member, npairs, s, p, sel, p)
            else:
                m = _neighbours(b, areas, s, thr, ios, grid, p, stamp, buf)
                sel = np.sort(buf[:m])[::-1]  # increasing score = decreasing rank position
                k = p if owner[p] < 0 else owner[p]
                if owner[p] < 0:
                    keeper[s + p] = True
                npairs = _assign(keeper, owner, pair_keep, pair_member, npairs, s, k, sel, -1)
    return keeper, pair_keep[:npairs], pair_member[:npairs]


@nb.njit(**JIT)
def merge_clusters(b, scores, labels, keepers, mstart, members, thr, ios):
    """SAHI's merge step: fold each keeper's members in, one by one, when they still match.

    A member is folded in when the metric between the current merged box and the member is
    strictly greater than ``thr`` (SAHI's ``has_match``, float64); the merged box is the
    enclosing box, the score the maximum, the label the one of the higher score (the member's
    on a tie, as in SAHI).
    """
    k = keepers.shape[0]
    ob = np.empty((k, 4), np.float64)
    osc = np.empty(k, np.float64)
    olab = np.empty(k, np.int64)
    for i in range(k):
        p = keepers[i]
        x1, y1, x2, y2 = (np.float64(b[p, 0]), np.float64(b[p, 1]),
                          np.float64(b[p, 2]), np.float64(b[p, 3]))
        sc = np.float64(scores[p])
        lab = labels[p]
        for t in range(mstart[i], mstart[i + 1]):
            q = members[t]
            qx1, qy1, qx2, qy2 = (np.float64(b[q, 0]), np.float64(b[q, 1]),
                                  np.float64(b[q, 2]), np.float64(b[q, 3]))
            a1 = (x2 - x1) * (y2 - y1)
            a2 = (qx2 - qx1) * (qy2 - qy1)
            iw = max(min(x2, qx2) - max(x1, qx1), 0.0)
            ih = max(min(y2, qy2) - max(y1, qy1), 0.0)
            inter = iw * ih
            den = min(a1, a2) if ios else a1 + a2 - inter
            value = inter / den if den > 0 else 0.0
            if value > thr:
                x1, y1 = min(x1, qx1), min(y1, qy1)
                x2, y2 = max(x2, qx2), max(y2, qy2)
                qs = np.float64(scores[q])
                if not (sc > qs):
                    lab = labels[q]
                sc = max(sc, qs)
        ob[i, 0], ob[i, 1], ob[i, 2], ob[i, 3] = x1, y1, x2, y2
        osc[i] = sc
        olab[i] = lab
    return ob, osc, olab
