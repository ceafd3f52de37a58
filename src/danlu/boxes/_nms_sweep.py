"""Hard NMS in plain numpy, for small inputs: the numba kernel's answer without numba's start-up.

The first call of any numba kernel in a process costs a few hundred milliseconds even when the
compiled code is on disk (numba initialises its typing and code generation machinery then), far
more than NMS on a thousand boxes takes. This path returns the same kept indices, in the same
order, as ``_nms_kernels.nms_sorted`` for ``iou_threshold >= 0`` (or NaN), and hands anything
else back to the caller (returns None).

How: only *proper* boxes (finite, positive width and height) can suppress or be suppressed when
the threshold is ``>= 0`` (every other pair has a zero or NaN IoU, see :mod:`danlu.boxes._grid`),
and only pairs whose intersection has positive area can have a positive IoU. Every such pair
shares a horizontal strip and overlaps along x there, so a sorted sweep per (label, strip)
lists them; their IoU is computed vectorised with torchvision's operations in the boxes' dtype
and compared with the threshold in float64, as the kernel does; then a greedy pass over the
suppressing pairs, in rank order, marks the suppressed boxes.
"""

from __future__ import annotations

import numpy as np

# Beyond these the numba kernel is the better engine: once loaded it takes ~0.1-0.5 ms per 1000
# boxes, this path ~0.3-3 ms (measured on a 2-core CPU; the pair budget bounds its worst case).
MAX_BOXES = 4096
_MAX_PAIRS_PER_BOX = 64


def _proper_positions(b: np.ndarray) -> np.ndarray:
    """Positions of the boxes that can overlap anything: finite, ``x2 > x1`` and ``y2 > y1``."""
    ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & np.isfinite(b).all(axis=1)
    return np.flatnonzero(ok)


def _ramp(counts: np.ndarray) -> np.ndarray:
    """``0, 1, ..., c - 1`` for each ``c`` of ``counts``, concatenated."""
    total = int(counts.sum())
    return np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)


def _strips(y1: np.ndarray, y2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The range of horizontal strips ``[s1, s2]`` each box covers.

    Strips are about one median box height tall, so a typical box covers two; they are made
    taller (never more strips than boxes) until a box covers at most three on average.
    ``y -> floor((y - ymin) / height)`` is monotone, so two boxes whose intersection has
    positive area share the strip of its top edge, ``max(s1)`` of the two.
    """
    y1 = y1.astype(np.float64)
    y2 = y2.astype(np.float64)
    m = y1.shape[0]
    zeros = np.zeros(m, np.int64)
    if m < 2:
        return zeros, zeros
    ymin = y1.min()
    extent = y2.max() - ymin
    # the middle box height (np.median would import numpy.ma, ~20 ms on a first call)
    height = max(float(np.partition(y2 - y1, m // 2)[m // 2]), extent / m)
    if not (np.isfinite(extent) and height > 0):
        return zeros, zeros  # one strip
    while True:
        s1 = ((y1 - ymin) / height).astype(np.int64)  # floor: the values are >= 0
        s2 = ((y2 - ymin) / height).astype(np.int64)
        if int((s2 - s1).sum()) <= 2 * m:
            return s1, s2
        height *= 2.0


def _ranks(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer ranks of the values of ``x1`` and ``x2`` among all of them (equal values, equal
    ranks; order kept), and the number of distinct values."""
    values, inverse = np.unique(np.concatenate([x1, x2]), return_inverse=True)
    return inverse[:x1.shape[0]], inverse[x1.shape[0]:], values.shape[0]


def _candidate_pairs(b: np.ndarray, labels: np.ndarray | None, max_pairs: int
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(i, j)`` rank positions, ``i < j``, equal labels: every pair of boxes whose
    intersection has positive area, once, and some pairs that merely share a strip.

    ``b`` and ``labels`` are in rank order. Each proper box is entered in every strip it covers
    (:func:`_strips`); within each (label, strip), sorted by ``x1``, a box pairs with the later
    boxes that start left of its ``x2``. None when that gives more than ``max_pairs`` pairs.
    """
    pos = _proper_positions(b)
    s1, s2 = _strips(b[pos, 1], b[pos, 3])
    rx1, rx2, nx = _ranks(b[pos, 0], b[pos, 2])
    if labels is None:
        cell = s1  # the first (label, strip) cell of each box
    else:
        _, lab = np.unique(labels[pos], return_inverse=True)
        cell = lab * (int(s2.max(initial=0)) + 1) + s1
    reps = s2 - s1 + 1
    entry_box = np.repeat(np.arange(pos.shape[0]), reps)
    step = _ramp(reps)  # the entry's strip is s1 + step, its cell cell + step
    entry_cell = np.repeat(cell, reps) + step
    # one integer key orders the entries by (label, strip, x1); x2's key bounds the sweep
    key1 = entry_cell * nx + rx1[entry_box]
    order = np.argsort(key1)  # ties (equal x1 in one cell) may come in any order
    key1 = key1[order]
    entry_box = entry_box[order]
    entry_strip = s1[entry_box] + step[order]
    key2 = entry_cell[order] * nx + rx2[entry_box]
    counts = np.searchsorted(key1, key2, side="left") - np.arange(1, key1.shape[0] + 1)
    if int(counts.sum()) > max_pairs:
        return None
    first = np.repeat(np.arange(key1.shape[0]), counts)
    second = first + 1 + _ramp(counts)
    a, c = entry_box[first], entry_box[second]
    # a pair sharing several strips is kept in one: the strip of its intersection's top edge
    once = entry_strip[first] == np.maximum(s1[a], s1[c])
    a, c = pos[a[once]], pos[c[once]]
    return np.minimum(a, c), np.maximum(a, c)


def _iou_tv(b: np.ndarray, areas: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """IoU of the pairs ``(b[i], b[j])`` with torchvision's CPU operations, in ``b``'s dtype.

    ``i`` is the higher-ranked box, as in the kernel. Coordinates are finite here, so
    ``np.maximum`` / ``np.minimum`` pick what ``std::max`` / ``std::min`` pick.
    """
    bi, bj = b[i], b[j]
    zero = b.dtype.type(0)
    w = np.minimum(bi[:, 2], bj[:, 2]) - np.maximum(bi[:, 0], bj[:, 0])
    h = np.minimum(bi[:, 3], bj[:, 3]) - np.maximum(bi[:, 1], bj[:, 1])
    w = np.where(zero < w, w, zero)
    h = np.where(zero < h, h, zero)
    inter = w * h
    return inter / (areas[i] + areas[j] - inter)


def _greedy(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Suppressed flags ``[n]`` of greedy NMS, given every pair ``src < dst`` above threshold.

    Visiting sources in rank order, a source that is still unsuppressed is kept and suppresses
    its partners; a box's flag is final before it is visited, since only higher-ranked boxes
    can suppress it.
    """
    supp = np.zeros(n, dtype=bool)
    if src.shape[0] == 0:
        return supp
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src], dst[by_src]
    cuts = np.flatnonzero(src[1:] != src[:-1]) + 1
    lo = np.concatenate([[0], cuts])
    hi = np.concatenate([cuts, [src.shape[0]]])
    for s, a, e in zip(src[lo].tolist(), lo.tolist(), hi.tolist(), strict=True):
        if not supp[s]:
            supp[dst[a:e]] = True
    return supp


def nms_keep(b: np.ndarray, labels: np.ndarray | None, thr: float) -> np.ndarray | None:
    """Kept rank positions of (class-aware) hard NMS on boxes in rank order, or None.

    Args:
        b: ``[N, 4]`` float32/float64 boxes sorted by rank (decreasing score, ties by index).
        labels: ``[N]`` int64 labels in the same order, or None (class-agnostic).
        thr: suppress when ``IoU > thr``.

    Returns:
        Increasing positions of the kept boxes; None when this path does not apply (``thr < 0``,
        more than :data:`MAX_BOXES` boxes, or too many candidate pairs): use the kernel then.
    """
    n = b.shape[0]
    if thr < 0 or n > MAX_BOXES:
        return None
    pairs = _candidate_pairs(b, labels, _MAX_PAIRS_PER_BOX * n)
    if pairs is None:
        return None
    i, j = pairs
    # IEEE results exactly as in the kernel (inf - inf, overflow, 0/0 give inf or NaN, which
    # never pass the test); numpy's warnings about them are noise here
    with np.errstate(all="ignore"):
        areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        iou = _iou_tv(b, areas, i, j)
    hit = iou.astype(np.float64) > thr  # the kernel compares in float64
    return np.flatnonzero(~_greedy(n, i[hit], j[hit]))
