"""Numba kernels behind the NMS family (hard NMS, IoU-guided NMS, Soft-NMS, NMM).

All of them share one idea: two boxes whose intersection has positive area both cover some
point inside it, so they share a cell of any uniform grid laid over the image. A kept box
therefore only has to look at the boxes registered in the cells its own rectangle covers,
instead of at every remaining box. Every box is registered in every cell it covers; the cell
size comes from the median box size so a typical box covers a few cells, and the grid is
coarsened until it has at most about two cells per box.

A threshold test ``overlap > t`` with ``t >= 0`` can only pass for pairs with a positive
intersection, so the grid never misses a pair: results are exact, not approximate. Where that
argument does not hold (``t < 0``), or where a degenerate layout would register too many
(box, cell) pairs (many boxes as large as the whole image), the kernels fall back to the plain
O(N*K) loop, which is what torchvision runs.

Conventions inside this module: boxes are ``[N, 4]`` xyxy arrays already in processing order
(by rank, grouped by label); groups are contiguous slices ``[starts[g], starts[g + 1])``.
``error_model="numpy"`` makes 0/0 give NaN (as in C++ and numpy) instead of raising.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_JIT = {"cache": True, "error_model": "numpy", "nogil": True}
# (box, cell) registrations allowed per box before a group falls back to the plain loop
_REGISTRATIONS_PER_BOX = 16
_SIZE_SAMPLE = 1024


# ----------------------------------------------------------------------------------------------
# the uniform grid


@nb.njit(**_JIT)
def _proper(x1: float, y1: float, x2: float, y2: float) -> bool:
    """Finite with positive width and height: the only boxes that can overlap anything."""
    return (x2 > x1) and (y2 > y1) and np.isfinite(x1) and np.isfinite(x2) \
        and np.isfinite(y1) and np.isfinite(y2)


@nb.njit(**_JIT)
def _grid_layout(b, s, e):
    """Choose a grid for boxes ``b[s:e]`` and the cell range each (proper) box covers.

    Returns ``(ok, xmin, ymin, inv, gx, gy, proper, cx1, cy1, cx2, cy2, total)`` where a
    coordinate ``x`` falls in column ``floor((x - xmin) * inv)`` and ``total`` is the number of
    (box, cell) pairs. ``ok`` is False when no sensible grid exists (non-finite extent) or when
    ``total`` exceeds the registration budget; callers then run their plain loop.
    """
    n = e - s
    proper = np.zeros(n, np.bool_)
    xmin = np.inf
    ymin = np.inf
    xmax = -np.inf
    ymax = -np.inf
    count = 0
    for k in range(n):
        x1 = np.float64(b[s + k, 0])
        y1 = np.float64(b[s + k, 1])
        x2 = np.float64(b[s + k, 2])
        y2 = np.float64(b[s + k, 3])
        if _proper(x1, y1, x2, y2):
            proper[k] = True
            count += 1
            xmin = min(xmin, x1)
            ymin = min(ymin, y1)
            xmax = max(xmax, x2)
            ymax = max(ymax, y2)
    cx1 = np.zeros(n, np.int32)
    cy1 = np.zeros(n, np.int32)
    cx2 = np.zeros(n, np.int32)
    cy2 = np.zeros(n, np.int32)
    if count == 0:
        return True, 0.0, 0.0, 1.0, 1, 1, proper, cx1, cy1, cx2, cy2, 0
    # cell size: median of the larger side over an evenly strided sample of the boxes
    step = max(1, count // _SIZE_SAMPLE)
    sample = np.empty(count // step + 1, np.float64)
    m = 0
    seen = 0
    for k in range(n):
        if proper[k]:
            if seen % step == 0:
                w = np.float64(b[s + k, 2]) - np.float64(b[s + k, 0])
                h = np.float64(b[s + k, 3]) - np.float64(b[s + k, 1])
                sample[m] = max(w, h)
                m += 1
            seen += 1
    cell = np.median(sample[:m])
    ew = xmax - xmin
    eh = ymax - ymin
    if not (np.isfinite(ew) and np.isfinite(eh) and cell > 0 and np.isfinite(cell)):
        return False, 0.0, 0.0, 1.0, 1, 1, proper, cx1, cy1, cx2, cy2, 0
    limit = 2.0 * count + 64.0
    while (ew / cell + 1.0) * (eh / cell + 1.0) > limit:
        cell *= 2.0
    inv = 1.0 / cell
    gx = int(ew * inv) + 1
    gy = int(eh * inv) + 1
    total = 0
    for k in range(n):
        if proper[k]:
            # x -> floor((x - xmin) * inv) is monotone, so a point inside two boxes maps to a
            # cell inside both boxes' cell ranges
            cx1[k] = min(int((np.float64(b[s + k, 0]) - xmin) * inv), gx - 1)
            cy1[k] = min(int((np.float64(b[s + k, 1]) - ymin) * inv), gy - 1)
            cx2[k] = min(int((np.float64(b[s + k, 2]) - xmin) * inv), gx - 1)
            cy2[k] = min(int((np.float64(b[s + k, 3]) - ymin) * inv), gy - 1)
            total += (cx2[k] - cx1[k] + 1) * (cy2[k] - cy1[k] + 1)
    ok = total <= _REGISTRATIONS_PER_BOX * count + 2 * gx * gy
    return ok, xmin, ymin, inv, gx, gy, proper, cx1, cy1, cx2, cy2, total


@nb.njit(**_JIT)
def _build_grid(b, s, e):
    """Register boxes ``b[s:e]`` (local ids 0..n-1) in the cells they cover.

    Returns ``(ok, gx, start, entries, cx1, cy1, cx2, cy2, proper)``: cell ``c`` holds the local
    ids ``entries[start[c]:start[c + 1]]`` in increasing order; box ``k`` covers cells
    ``[cx1[k], cx2[k]] x [cy1[k], cy2[k]]``. ``ok`` is False when the grid is refused (the
    caller then runs the plain loop). Boxes that are not proper are not registered.
    """
    ok, _, _, _, gx, gy, proper, cx1, cy1, cx2, cy2, total = _grid_layout(b, s, e)
    start = np.zeros(gx * gy + 1, np.int64)
    if not ok:
        return False, gx, start, np.zeros(0, np.int32), cx1, cy1, cx2, cy2, proper
    n = e - s
    for k in range(n):
        if proper[k]:
            for cy in range(cy1[k], cy2[k] + 1):
                for cx in range(cx1[k], cx2[k] + 1):
                    start[cy * gx + cx + 1] += 1
    for c in range(gx * gy):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    entries = np.empty(total, np.int32)
    for k in range(n):
        if proper[k]:
            for cy in range(cy1[k], cy2[k] + 1):
                for cx in range(cx1[k], cx2[k] + 1):
                    c = cy * gx + cx
                    entries[fill[c]] = k
                    fill[c] += 1
    return True, gx, start, entries, cx1, cy1, cx2, cy2, proper


# ----------------------------------------------------------------------------------------------
# hard NMS and IoU-guided NMS


@nb.njit(inline="always", **_JIT)
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


@nb.njit(**_JIT)
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


@nb.njit(**_JIT)
def _nms_group_grid(b, areas, s, e, thr, keep, cls, out, track):
    """Greedy NMS on the slice ``[s, e)`` looking only at boxes sharing a grid cell.

    Returns False (having done nothing) when the grid is refused; the caller then runs the
    plain loop. Only valid for ``thr >= 0`` or NaN (see the module docstring).
    """
    n = e - s
    ok, gx, start, entries, cx1, cy1, cx2, cy2, proper = _build_grid(b, s, e)
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


@nb.njit(**_JIT)
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


@nb.njit(**_JIT)
def group_by_label(labels):
    """Stable permutation grouping equal labels (in increasing label order), and the boundaries.

    Uses a counting sort when the label range is small (the usual case: class ids), otherwise
    a stable merge sort.
    """
    n = labels.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    lo = labels.min()
    hi = labels.max()
    if hi - lo < 4 * n + 1024:
        span = hi - lo + 1
        counts = np.zeros(span + 1, np.int64)
        for i in range(n):
            counts[labels[i] - lo + 1] += 1
        for v in range(span):
            counts[v + 1] += counts[v]
        ngroups = 0
        for v in range(span):
            if counts[v + 1] > counts[v]:
                ngroups += 1
        starts = np.empty(ngroups + 1, np.int64)
        g = 0
        for v in range(span):
            if counts[v + 1] > counts[v]:
                starts[g] = counts[v]
                g += 1
        starts[ngroups] = n
        perm = np.empty(n, np.int64)
        fill = counts[:-1].copy()
        for i in range(n):
            v = labels[i] - lo
            perm[fill[v]] = i
            fill[v] += 1
        return perm, starts
    perm = np.argsort(labels, kind="mergesort")
    ngroups = 1
    for i in range(1, n):
        if labels[perm[i]] != labels[perm[i - 1]]:
            ngroups += 1
    starts = np.empty(ngroups + 1, np.int64)
    starts[0] = 0
    g = 1
    for i in range(1, n):
        if labels[perm[i]] != labels[perm[i - 1]]:
            starts[g] = i
            g += 1
    starts[ngroups] = n
    return perm, starts


# ----------------------------------------------------------------------------------------------
# Soft-NMS


@nb.njit(inline="always", **_JIT)
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


@nb.njit(inline="always", **_JIT)
def _decay(ovr, linear, nt, sigma):
    """The Soft-NMS weight for one overlap value (ensemble-boxes' formulas)."""
    if linear:
        return 1.0 - ovr if ovr > nt else 1.0
    return np.exp(-(ovr * ovr) / sigma)


@nb.njit(inline="always", **_JIT)
def _before(sa, ia, sb, ib):
    """Heap order: higher score first, then lower id."""
    return sa > sb or (sa == sb and ia < ib)


@nb.njit(**_JIT)
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


@nb.njit(inline="always", **_JIT)
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


@nb.njit(**_JIT)
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
    ok, gx, start, entries, cx1, cy1, cx2, cy2, proper = _build_grid(b, s, e)
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
        if not proper[top]:
            continue
        for cy in range(cy1[top], cy2[top] + 1):
            for cx in range(cx1[top], cx2[top] + 1):
                cell = cy * gx + cx
                for t in range(start[cell], start[cell + 1]):
                    q = entries[t]
                    if picked[q] or stamp[q] == top:
                        continue
                    stamp[q] = top
                    ovr = _iou_f64(b, s + top, s + q)
                    if ovr > 0.0:
                        cur[s + q] = _decay(ovr, linear, nt, sigma) * cur[s + q]


@nb.njit(**_JIT)
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


# ----------------------------------------------------------------------------------------------
# Weighted boxes fusion


@nb.njit(inline="always", **_JIT)
def _iou_wbf(fb, c, b, j):
    """IoU of fused box ``c`` against box ``j`` as ensemble-boxes computes it (float64)."""
    xa = max(fb[c, 0], b[j, 0])
    ya = max(fb[c, 1], b[j, 1])
    xb = min(fb[c, 2], b[j, 2])
    yb = min(fb[c, 3], b[j, 3])
    inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
    area_a = (fb[c, 2] - fb[c, 0]) * (fb[c, 3] - fb[c, 1])
    area_b = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
    return inter / (area_a + area_b - inter)


@nb.njit(**_JIT)
def _wbf_join(fb, acc, conf, cnt, wsum, cmax, fscore, fweight, c, b, ws, wt, j, use_max):
    """Add box ``j`` to cluster ``c`` and recompute its fused box, ensemble-boxes style.

    ensemble-boxes rebuilds the fused box in a float32 buffer: coordinates accumulate as
    ``float32(acc + score * x)`` and are divided by the float64 confidence sum, then stored
    back as float32 values; the score (mean or max) and the weight sum are float32 too.
    """
    for k in range(4):
        acc[c, k] = np.float32(np.float64(acc[c, k]) + ws[j] * b[j, k])
    conf[c] += ws[j]
    wsum[c] += wt[j]
    cmax[c] = max(cmax[c], ws[j])
    cnt[c] += 1
    for k in range(4):
        fb[c, k] = np.float64(np.float32(np.float64(acc[c, k]) / conf[c]))
    if use_max:
        fscore[c] = np.float64(np.float32(cmax[c]))
    else:
        fscore[c] = np.float64(np.float32(conf[c] / cnt[c]))
    fweight[c] = np.float64(np.float32(wsum[c]))


@nb.njit(**_JIT)
def _wbf_group(b, ws, wt, s, e, thr, use_max, member_of, fb, fscore, fweight, cnt, grid):
    """Cluster boxes ``[s, e)`` (sorted by weighted score) the way ensemble-boxes does.

    Each box joins the existing cluster whose *current* fused box has the highest IoU with it
    (first cluster on ties) when that IoU is > ``thr``, else starts a new cluster. Clusters are
    found through a grid: a fused box is a weighted mean of its members, so it lies inside the
    bounding hull of its members, and each cluster is registered in the cells of that hull
    (extended as members join). Returns the number of clusters, or -1 when the registrations
    exceed the budget (the caller reruns with ``grid=False``, the plain scan).
    """
    n = e - s
    acc = np.zeros((n, 4), np.float32)
    conf = np.zeros(n, np.float64)
    wsum = np.zeros(n, np.float64)
    cmax = np.zeros(n, np.float64)
    ncl = 0
    stamp = np.full(n, -1, np.int64)
    if grid:
        ok, xmin, ymin, inv, gx, gy, proper, cx1, cy1, cx2, cy2, total = _grid_layout(b, s, e)
        if not ok:
            return -1
        budget = _REGISTRATIONS_PER_BOX * n + 2 * gx * gy
        head = np.full(gx * gy, -1, np.int64)
        node_next = np.empty(total + 16, np.int64)
        node_cl = np.empty(total + 16, np.int64)
        nodes = 0
        hx1 = np.zeros(n, np.int64)
        hy1 = np.zeros(n, np.int64)
        hx2 = np.zeros(n, np.int64)
        hy2 = np.zeros(n, np.int64)
    for k in range(n):
        j = s + k
        best = -1
        best_iou = thr
        if grid:
            for cy in range(cy1[k], cy2[k] + 1):
                for cx in range(cx1[k], cx2[k] + 1):
                    node = head[cy * gx + cx]
                    while node >= 0:
                        c = node_cl[node]
                        node = node_next[node]
                        if stamp[c] == k:
                            continue
                        stamp[c] = k
                        iou = _iou_wbf(fb, c, b, j)
                        if iou > best_iou or (iou == best_iou and best >= 0 and c < best):
                            best = c
                            best_iou = iou
        else:
            for c in range(ncl):
                iou = _iou_wbf(fb, c, b, j)
                if iou > best_iou:
                    best = c
                    best_iou = iou
        if best < 0:
            c = ncl
            ncl += 1
            for t in range(4):
                fb[c, t] = b[j, t]
                acc[c, t] = np.float32(ws[j] * b[j, t])
            conf[c] = ws[j]
            wsum[c] = wt[j]
            cmax[c] = ws[j]
            cnt[c] = 1
            fscore[c] = ws[j]
            fweight[c] = wt[j]
            member_of[j] = c
            if grid:
                ox1, oy1, ox2, oy2 = 0, 0, -1, -1  # empty old hull
                nx1, ny1, nx2, ny2 = cx1[k], cy1[k], cx2[k], cy2[k]
        else:
            c = best
            member_of[j] = c
            _wbf_join(fb, acc, conf, cnt, wsum, cmax, fscore, fweight, c, b, ws, wt, j, use_max)
            if grid:
                ox1, oy1, ox2, oy2 = hx1[c], hy1[c], hx2[c], hy2[c]
                nx1, ny1 = min(ox1, cx1[k]), min(oy1, cy1[k])
                nx2, ny2 = max(ox2, cx2[k]), max(oy2, cy2[k])
        if grid:
            # register the cluster in the cells its hull gained
            for cy in range(ny1, ny2 + 1):
                for cx in range(nx1, nx2 + 1):
                    if ox1 <= cx <= ox2 and oy1 <= cy <= oy2:
                        continue
                    if nodes == node_next.shape[0]:
                        if nodes >= budget:
                            return -1
                        grow = np.empty(2 * nodes, np.int64)
                        grow[:nodes] = node_next
                        node_next = grow
                        grow2 = np.empty(2 * nodes, np.int64)
                        grow2[:nodes] = node_cl
                        node_cl = grow2
                    cell = cy * gx + cx
                    node_cl[nodes] = c
                    node_next[nodes] = head[cell]
                    head[cell] = nodes
                    nodes += 1
            hx1[c], hy1[c], hx2[c], hy2[c] = nx1, ny1, nx2, ny2
    return ncl


@nb.njit(**_JIT)
def wbf_sorted(b, ws, wt, starts, thr, use_max):
    """Weighted boxes fusion per group on boxes sorted by group, then by weighted score.

    Returns ``(member_of, cluster_start, fb, fscore, fweight, cnt)``: box ``k`` belongs to the
    global cluster ``member_of[k]``; group ``g``'s clusters are ``[cluster_start[g],
    cluster_start[g + 1])`` in creation order; ``fb``/``fscore``/``fweight``/``cnt`` are the
    fused box, the (not yet rescaled) score, the weight sum and the member count.
    """
    n = b.shape[0]
    member_of = np.empty(n, np.int64)
    fb = np.empty((n, 4), np.float64)
    fscore = np.empty(n, np.float64)
    fweight = np.empty(n, np.float64)
    cnt = np.zeros(n, np.int64)
    ng = starts.shape[0] - 1
    cluster_start = np.zeros(ng + 1, np.int64)
    for g in range(ng):
        s = starts[g]
        e = starts[g + 1]
        mo = np.empty(e - s, np.int64)
        fbg = np.empty((e - s, 4), np.float64)
        fsg = np.empty(e - s, np.float64)
        fwg = np.empty(e - s, np.float64)
        cng = np.zeros(e - s, np.int64)
        # the group's boxes as a local view, so the kernels index from 0
        bg = b[s:e]
        wsg = ws[s:e]
        wtg = wt[s:e]
        ncl = _wbf_group(bg, wsg, wtg, 0, e - s, thr, use_max, mo, fbg, fsg, fwg, cng, True)
        if ncl < 0:
            cng[:] = 0
            ncl = _wbf_group(bg, wsg, wtg, 0, e - s, thr, use_max, mo, fbg, fsg, fwg, cng,
                             False)
        c0 = cluster_start[g]
        cluster_start[g + 1] = c0 + ncl
        for k in range(e - s):
            member_of[s + k] = c0 + mo[k]
        fb[c0:c0 + ncl] = fbg[:ncl]
        fscore[c0:c0 + ncl] = fsg[:ncl]
        fweight[c0:c0 + ncl] = fwg[:ncl]
        cnt[c0:c0 + ncl] = cng[:ncl]
    total = cluster_start[ng]
    return member_of, cluster_start, fb[:total], fscore[:total], fweight[:total], cnt[:total]


# ----------------------------------------------------------------------------------------------
# non-maximum merging (SAHI's greedy NMM and NMM)


@nb.njit(inline="always", **_JIT)
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


@nb.njit(**_JIT)
def _neighbours(b, areas, s, e, thr, ios, use_grid, gx, start, entries, cx1, cy1, cx2, cy2,
                proper, p, stamp, buf):
    """Local ids ``q != p`` of the group with ``metric(p, q) >= thr``, into ``buf``; the count."""
    m = 0
    if use_grid:
        if not proper[p]:
            return 0
        for cy in range(cy1[p], cy2[p] + 1):
            for cx in range(cx1[p], cx2[p] + 1):
                cell = cy * gx + cx
                for t in range(start[cell], start[cell + 1]):
                    q = entries[t]
                    if q == p or stamp[q] == p:
                        continue
                    stamp[q] = p
                    if _match_value(b, areas, s + p, s + q, ios) >= thr:
                        buf[m] = q
                        m += 1
    else:
        for q in range(e - s):
            if q != p and _match_value(b, areas, s + p, s + q, ios) >= thr:
                buf[m] = q
                m += 1
    return m


@nb.njit(**_JIT)
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
        use_grid = thr > 0
        ok, gx, start, entries, cx1, cy1, cx2, cy2, proper = _build_grid(b, s, e)
        use_grid = use_grid and ok
        stamp = np.full(ng, -1, np.int64)
        buf = np.empty(ng, np.int64)
        owner = np.full(ng, -1, np.int64)  # the keeper a box was merged into
        for p in range(ng):
            if greedy:
                if owner[p] >= 0:
                    continue
                keeper[s + p] = True
                m = _neighbours(b, areas, s, e, thr, ios, use_grid, gx, start, entries, cx1,
                                cy1, cx2, cy2, proper, p, stamp, buf)
                sel = np.sort(buf[:m])
                for t in range(m):
                    q = sel[t]
                    if q > p and owner[q] < 0 and not keeper[s + q]:
                        owner[q] = p
                        pair_keep[npairs] = s + p
                        pair_member[npairs] = s + q
                        npairs += 1
            else:
                m = _neighbours(b, areas, s, e, thr, ios, use_grid, gx, start, entries, cx1,
                                cy1, cx2, cy2, proper, p, stamp, buf)
                sel = np.sort(buf[:m])[::-1]  # increasing score = decreasing rank position
                k = p if owner[p] < 0 else owner[p]
                if owner[p] < 0:
                    keeper[s + p] = True
                for t in range(m):
                    q = sel[t]
                    if owner[q] >= 0 or keeper[s + q] or q == k:
                        continue
                    owner[q] = k
                    pair_keep[npairs] = s + k
                    pair_member[npairs] = s + q
                    npairs += 1
    return keeper, pair_keep[:npairs], pair_member[:npairs]


@nb.njit(**_JIT)
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


# ----------------------------------------------------------------------------------------------
# candidate pairs (polygon NMS)


@nb.njit(**_JIT)
def overlap_pairs(b, starts):
    """All pairs ``(p, q)``, ``p < q`` in the same group, whose boxes share positive area.

    ``b`` holds the enclosing boxes in processing order. Returns ``(first, second)`` positions.
    Groups the grid refuses are compared pair by pair.
    """
    cap = 4 * b.shape[0] + 16
    first = np.empty(cap, np.int64)
    second = np.empty(cap, np.int64)
    m = 0
    for g in range(starts.shape[0] - 1):
        s = starts[g]
        e = starts[g + 1]
        n = e - s
        ok, gx, start, entries, cx1, cy1, cx2, cy2, proper = _build_grid(b, s, e)
        stamp = np.full(n, -1, np.int64)
        for p in range(n):
            if not proper[p]:
                continue
            for q0 in range(n if not ok else 0):
                # plain path: every later proper box
                q = q0
                if q <= p or not proper[q]:
                    continue
                if min(b[s + p, 2], b[s + q, 2]) > max(b[s + p, 0], b[s + q, 0]) and \
                        min(b[s + p, 3], b[s + q, 3]) > max(b[s + p, 1], b[s + q, 1]):
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
            if not ok:
                continue
            for cy in range(cy1[p], cy2[p] + 1):
                for cx in range(cx1[p], cx2[p] + 1):
                    cell = cy * gx + cx
                    for t in range(start[cell], start[cell + 1]):
                        q = entries[t]
                        if q <= p or stamp[q] == p:
                            continue
                        stamp[q] = p
                        if min(b[s + p, 2], b[s + q, 2]) > max(b[s + p, 0], b[s + q, 0]) and \
                                min(b[s + p, 3], b[s + q, 3]) > max(b[s + p, 1], b[s + q, 1]):
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


@nb.njit(**_JIT)
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
