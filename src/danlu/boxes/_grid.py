"""Shared numba building blocks of the NMS family: grouping by label and the uniform grid.

The kernels of every family (``_nms_kernels``, ``_soft_nms_kernels``, ``_wbf_kernels``,
``_nmm_kernels``) share one idea: two boxes whose intersection has positive area both cover
some point inside it, so they share a cell of any uniform grid laid over the image. A box
therefore only has to look at the boxes registered in the cells its own rectangle covers,
instead of at every other box. Every box is registered in every cell it covers; the cell size
comes from the median box size so a typical box covers a few cells, and the grid is coarsened
until it has at most about two cells per box.

A threshold test ``overlap > t`` with ``t >= 0`` can only pass for pairs with a positive
intersection, so the grid never misses a pair: results are exact, not approximate. Where that
argument does not hold (``t < 0``), or where a degenerate layout would register too many
(box, cell) pairs (many boxes as large as the whole image), the kernels fall back to their
plain O(N*K) loops.

Conventions: boxes are ``[N, 4]`` xyxy arrays already in processing order (by rank, grouped by
label); groups are contiguous slices ``[starts[g], starts[g + 1])``; inside a group boxes have
local ids ``0..n-1``. ``error_model="numpy"`` makes 0/0 give NaN (as in C++ and numpy) instead
of raising.

numba's on-disk cache keys a kernel on its own source file only: a kernel in another module
that calls a helper from here is not recompiled when this file changes. After editing this
module, delete the ``__pycache__/*.nbi`` / ``*.nbc`` files of ``danlu/boxes`` (or set
``NUMBA_CACHE_DIR`` to a fresh directory) before measuring or testing.
"""

from __future__ import annotations

import numba as nb
import numpy as np

JIT = {"cache": True, "error_model": "numpy", "nogil": True}
# (box, cell) registrations allowed per box before a group falls back to the plain loop
REGISTRATIONS_PER_BOX = 16
_SIZE_SAMPLE = 1024


@nb.njit(**JIT)
def is_proper(x1: float, y1: float, x2: float, y2: float) -> bool:
    """Finite with positive width and height: the only boxes that can overlap anything."""
    return (x2 > x1) and (y2 > y1) and np.isfinite(x1) and np.isfinite(x2) \
        and np.isfinite(y1) and np.isfinite(y2)


@nb.njit(inline="always", **JIT)
def positive_overlap(b, p, q):
    """Whether boxes ``b[p]`` and ``b[q]`` intersect with positive area."""
    return min(b[p, 2], b[q, 2]) > max(b[p, 0], b[q, 0]) and \
        min(b[p, 3], b[q, 3]) > max(b[p, 1], b[q, 1])


@nb.njit(**JIT)
def _cell_size(b, s, proper, count):
    """Median of the larger side over an evenly strided sample of the proper boxes."""
    step = max(1, count // _SIZE_SAMPLE)
    sample = np.empty(count // step + 1, np.float64)
    m = 0
    seen = 0
    for k in range(proper.shape[0]):
        if proper[k]:
            if seen % step == 0:
                w = np.float64(b[s + k, 2]) - np.float64(b[s + k, 0])
                h = np.float64(b[s + k, 3]) - np.float64(b[s + k, 1])
                sample[m] = max(w, h)
                m += 1
            seen += 1
    return np.median(sample[:m])


@nb.njit(**JIT)
def grid_layout(b, s, e):
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
        if is_proper(x1, y1, x2, y2):
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
    cell = _cell_size(b, s, proper, count)
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
    ok = total <= REGISTRATIONS_PER_BOX * count + 2 * gx * gy
    return ok, xmin, ymin, inv, gx, gy, proper, cx1, cy1, cx2, cy2, total


@nb.njit(**JIT)
def build_grid(b, s, e):
    """Register boxes ``b[s:e]`` (local ids 0..n-1) in the cells they cover.

    Returns ``(ok, gx, start, entries, cx1, cy1, cx2, cy2, proper)``: cell ``c`` holds the local
    ids ``entries[start[c]:start[c + 1]]`` in increasing order; box ``k`` covers cells
    ``[cx1[k], cx2[k]] x [cy1[k], cy2[k]]``. ``ok`` is False when the grid is refused (the
    caller then runs the plain loop). Boxes that are not proper are not registered.
    """
    ok, _, _, _, gx, gy, proper, cx1, cy1, cx2, cy2, total = grid_layout(b, s, e)
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


@nb.njit(inline="always", **JIT)
def candidates(use_grid, n, p, after, gx, start, entries, cx1, cy1, cx2, cy2, proper, stamp,
               buf):
    """The local ids ``q > after`` that may overlap box ``p`` of an ``n``-box group, into
    ``buf``; the count.

    With the grid (``use_grid``): every registered box sharing a cell with ``p``, each once
    (``stamp[q] == p`` marks those already listed), in cell order, then entry order; nothing
    when ``p`` is not proper (it overlaps nothing). Without: ``after + 1 .. n - 1``. ``p``
    itself may be listed; callers filter.
    """
    m = 0
    if not use_grid:
        for q in range(after + 1, n):
            buf[m] = q
            m += 1
        return m
    if not proper[p]:
        return 0
    for cy in range(cy1[p], cy2[p] + 1):
        for cx in range(cx1[p], cx2[p] + 1):
            cell = cy * gx + cx
            for t in range(start[cell], start[cell + 1]):
                q = entries[t]
                if q > after and stamp[q] != p:
                    stamp[q] = p
                    buf[m] = q
                    m += 1
    return m


@nb.njit(**JIT)
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
        return _group_by_counting(labels, lo, hi)
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


@nb.njit(**JIT)
def _group_by_counting(labels, lo, hi):
    """:func:`group_by_label` by a counting sort over the label range ``[lo, hi]``."""
    n = labels.shape[0]
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
