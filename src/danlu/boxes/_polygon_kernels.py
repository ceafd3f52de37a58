"""Numba kernels of the exact polygon IoU (see :mod:`danlu.boxes.polygon` for the method).

Compiled on first use and cached on disk; they use one thread, hold no Python objects and
release the GIL, so threads can call them concurrently. Kept apart from ``polygon.py`` so that
importing the package does not import numba.
"""

from __future__ import annotations

import numba
import numpy as np

# A convex 4-gon clipped by four half-planes has at most 8 vertices; a non-convex subject at most
# doubles per clip, so 64 slots can never overflow whatever the input.
_MAXV = 64


@numba.njit(cache=True, nogil=True)
def normalize(p: np.ndarray, out: np.ndarray, area: np.ndarray, box: np.ndarray) -> None:
    """Copy each polygon of ``p`` (any float dtype) to ``out`` as float64, vertex order
    reversed where the shoelace area (taken relative to the first vertex, as
    :func:`danlu.boxes.polygon.polygon_signed_area`) is negative; write its absolute area and
    enclosing box."""
    for i in range(p.shape[0]):
        x0, y0 = np.float64(p[i, 0, 0]), np.float64(p[i, 0, 1])
        s = 0.0
        for v in range(4):
            w = (v + 1) % 4
            xv, yv = np.float64(p[i, v, 0]) - x0, np.float64(p[i, v, 1]) - y0
            xw, yw = np.float64(p[i, w, 0]) - x0, np.float64(p[i, w, 1]) - y0
            s += xv * yw - xw * yv
        s *= 0.5
        for v in range(4):
            src = 3 - v if s < 0.0 else v
            out[i, v, 0] = p[i, src, 0]
            out[i, v, 1] = p[i, src, 1]
        area[i] = abs(s)
        box[i, 0] = min(min(out[i, 0, 0], out[i, 1, 0]), min(out[i, 2, 0], out[i, 3, 0]))
        box[i, 1] = min(min(out[i, 0, 1], out[i, 1, 1]), min(out[i, 2, 1], out[i, 3, 1]))
        box[i, 2] = max(max(out[i, 0, 0], out[i, 1, 0]), max(out[i, 2, 0], out[i, 3, 0]))
        box[i, 3] = max(max(out[i, 0, 1], out[i, 1, 1]), max(out[i, 2, 1], out[i, 3, 1]))


@numba.njit(cache=True, nogil=True, inline="always")
def _intersection_area(p1: np.ndarray, i: int, p2: np.ndarray, j: int, bx: np.ndarray,
                       by: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> float:
    """Area of polygon ``p1[i]`` clipped by the convex, positively oriented ``p2[j]``.

    Sutherland-Hodgman: clip by each edge of ``p2[j]`` in turn, keeping the part on its left
    (``cross >= 0``). Coordinates are shifted to the clip polygon's first vertex so the cross
    products of nearby points in a large image keep their precision. ``bx, by, cx, cy`` are
    scratch buffers. Arrays and indices are passed rather than slices, which numba would
    materialize per pair.
    """
    ox, oy = p2[j, 0, 0], p2[j, 0, 1]
    n = 4
    for v in range(4):
        bx[v] = p1[i, v, 0] - ox
        by[v] = p1[i, v, 1] - oy
    for k in range(4):
        k2 = (k + 1) % 4
        ex, ey = p2[j, k, 0] - ox, p2[j, k, 1] - oy
        dx, dy = p2[j, k2, 0] - p2[j, k, 0], p2[j, k2, 1] - p2[j, k, 1]
        m = 0
        # Signed distance (times the edge length) of each vertex to the edge line.
        x_cur, y_cur = bx[n - 1], by[n - 1]
        d_cur = dx * (y_cur - ey) - dy * (x_cur - ex)
        for v in range(n):
            x_nxt, y_nxt = bx[v], by[v]
            d_nxt = dx * (y_nxt - ey) - dy * (x_nxt - ex)
            # Edge cur -> nxt: emit the crossing point when it changes side, then nxt if inside.
            if (d_cur >= 0.0) != (d_nxt >= 0.0):
                t = d_cur / (d_cur - d_nxt)  # signs differ, so the divisor is never 0
                cx[m] = x_cur + t * (x_nxt - x_cur)
                cy[m] = y_cur + t * (y_nxt - y_cur)
                m += 1
            if d_nxt >= 0.0:
                cx[m] = x_nxt
                cy[m] = y_nxt
                m += 1
            x_cur, y_cur, d_cur = x_nxt, y_nxt, d_nxt
        if m < 3:
            return 0.0
        n = m
        for v in range(n):
            bx[v] = cx[v]
            by[v] = cy[v]
    s = 0.0
    for v in range(n):
        w = v + 1 if v + 1 < n else 0
        s += bx[v] * by[w] - bx[w] * by[v]
    return 0.5 * s if s > 0.0 else 0.0


@numba.njit(cache=True, nogil=True)
def _overlap(b1: np.ndarray, i: int, b2: np.ndarray, j: int) -> bool:
    """Whether enclosing boxes ``b1[i]`` and ``b2[j]`` overlap with positive area; boxes that
    only touch hold polygons with a zero-area intersection, so they are skipped too."""
    return not (b1[i, 0] >= b2[j, 2] or b2[j, 0] >= b1[i, 2]
                or b1[i, 1] >= b2[j, 3] or b2[j, 1] >= b1[i, 3])


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_iou(p1: np.ndarray, a1: np.ndarray, i: int, p2: np.ndarray, a2: np.ndarray, j: int,
              bx: np.ndarray, by: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> float:
    """IoU of ``p1[i]`` and ``p2[j]``, whose boxes overlap."""
    area1, area2 = a1[i], a2[j]
    if area1 <= 0.0 or area2 <= 0.0:
        return 0.0
    inter = _intersection_area(p1, i, p2, j, bx, by, cx, cy)
    if inter <= 0.0:
        return 0.0
    # Rounding can put the clipped area a hair above the smaller polygon's area; IoU stays <= 1.
    inter = min(inter, area1, area2)
    return inter / (area1 + area2 - inter)


@numba.njit(cache=True, nogil=True)
def iou_matrix(p1: np.ndarray, a1: np.ndarray, b1: np.ndarray, p2: np.ndarray, a2: np.ndarray,
                b2: np.ndarray, out: np.ndarray) -> None:
    """Fill the zero-initialized ``out`` [N, M]; only pairs with overlapping boxes are clipped.

    Sweep on x: with the second set sorted by ``x1``, the boxes that can overlap box ``i`` along
    x form one run, ``x1_i - max_width < x1_j < x2_i``, found by binary search; only that run
    gets the full box test. A sparse scene then costs far less than N * M box tests.
    """
    bx = np.empty(_MAXV)
    by = np.empty(_MAXV)
    cx = np.empty(_MAXV)
    cy = np.empty(_MAXV)
    order = np.argsort(b2[:, 0])
    x1s = b2[order, 0]
    max_w = np.max(b2[:, 2] - b2[:, 0])
    for i in range(p1.shape[0]):
        # The margin (far above rounding error) only widens the run; the box test decides.
        lo_key = b1[i, 0] - max_w - 1e-9 * (abs(b1[i, 0]) + max_w + 1.0)
        lo = np.searchsorted(x1s, lo_key, side="right")
        hi = np.searchsorted(x1s, b1[i, 2], side="left")
        for k in range(lo, hi):
            j = order[k]
            # The box test stays in the loop body: it decides most pairs, and a call per pair
            # would pay numba's reference counting on every array argument.
            if _overlap(b1, i, b2, j):
                out[i, j] = _pair_iou(p1, a1, i, p2, a2, j, bx, by, cx, cy)


@numba.njit(cache=True, nogil=True)
def iou_aligned(p1: np.ndarray, a1: np.ndarray, b1: np.ndarray, p2: np.ndarray, a2: np.ndarray,
                 b2: np.ndarray, out: np.ndarray) -> None:
    """Fill the zero-initialized ``out`` [K] with the IoU of each pair ``(p1[k], p2[k])``."""
    bx = np.empty(_MAXV)
    by = np.empty(_MAXV)
    cx = np.empty(_MAXV)
    cy = np.empty(_MAXV)
    for k in range(p1.shape[0]):
        if _overlap(b1, k, b2, k):
            out[k] = _pair_iou(p1, a1, k, p2, a2, k, bx, by, cx, cy)


@numba.njit(cache=True, nogil=True)
def iou_pairs(p1: np.ndarray, a1: np.ndarray, b1: np.ndarray, p2: np.ndarray, a2: np.ndarray,
               b2: np.ndarray, i1: np.ndarray, i2: np.ndarray, out: np.ndarray) -> None:
    """Fill the zero-initialized ``out`` [K] with the IoU of each pair
    ``(p1[i1[k]], p2[i2[k]])``."""
    bx = np.empty(_MAXV)
    by = np.empty(_MAXV)
    cx = np.empty(_MAXV)
    cy = np.empty(_MAXV)
    for k in range(i1.shape[0]):
        i, j = i1[k], i2[k]
        if _overlap(b1, i, b2, j):
            out[k] = _pair_iou(p1, a1, i, p2, a2, j, bx, by, cx, cy)
