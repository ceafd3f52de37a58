"""numba sorting kernels shared by the evaluators (COCO, DOTA): a stable descending argsort
of scores, a stable grouping by class (and image), and an in-place sort of a short run.

Every sort here is stable: equal keys keep their input order, which is how pycocotools and
the devkits break ties (their ``mergesort`` / MATLAB's ``sort``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _counting_pass(keys: np.ndarray, order: np.ndarray, num_keys: int) -> np.ndarray:
    """``order`` stably re-sorted by ``keys[order]`` (values ``0..num_keys - 1``)."""
    start = np.zeros(num_keys + 1, np.int64)
    for i in range(order.shape[0]):
        start[keys[order[i]] + 1] += 1
    for c in range(num_keys):
        start[c + 1] += start[c]
    out = np.empty(order.shape[0], np.int64)
    for i in range(order.shape[0]):
        k = keys[order[i]]
        out[start[k]] = order[i]
        start[k] += 1
    return out


@numba.njit(cache=True, nogil=True)
def group_by_label(labels: np.ndarray, num_classes: int, image: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices sorted by class, then image (``image`` >= 0), then input order, and the
    class boundaries ``[C + 1]``.

    One stable counting sort on ``(class, image)`` (on the class alone when the rows are in
    image order already); two passes, image then class, when that key space would be much
    larger than the rows.
    """
    n = labels.shape[0]
    in_order = True
    top = 0
    for i in range(n):
        if i and image[i] < image[i - 1]:
            in_order = False
        top = max(top, image[i])
    width = 1 if in_order else top + 1
    start = np.zeros(num_classes + 1, np.int64)
    for i in range(n):
        start[labels[i] + 1] += 1
    for c in range(num_classes):
        start[c + 1] += start[c]
    if width * num_classes > 4 * n + 1024:
        order = _counting_pass(image, np.arange(n), width)
        return _counting_pass(labels, order, num_classes), start
    fill = np.zeros(num_classes * width + 1, np.int64)
    for i in range(n):
        fill[labels[i] * width + (0 if in_order else image[i]) + 1] += 1
    for k in range(num_classes * width):
        fill[k + 1] += fill[k]
    order = np.empty(n, np.int64)
    for i in range(n):
        k = labels[i] * width + (0 if in_order else image[i])
        order[fill[k]] = i
        fill[k] += 1
    return order, start


@numba.njit(cache=True, nogil=True)
def sort_run_by_score(idx: np.ndarray, s: int, e: int, scores: np.ndarray) -> None:
    """Sort ``idx[s:e]`` in place by decreasing score, ties in the current order (stable)."""
    n = e - s
    if n <= 32:
        for i in range(s + 1, e):
            v = idx[i]
            sv = scores[v]
            j = i - 1
            while j >= s and scores[idx[j]] < sv:
                idx[j + 1] = idx[j]
                j -= 1
            idx[j + 1] = v
        return
    run = idx[s:e].copy()
    neg = np.empty(n)
    for i in range(n):
        neg[i] = -scores[run[i]]
    order = np.argsort(neg, kind="mergesort")
    for i in range(n):
        idx[s + i] = run[order[i]]


@numba.njit(cache=True, nogil=True)
def argsort_descending(x: np.ndarray) -> np.ndarray:
    """Indices that sort ``x`` by decreasing value, ties in input order (stable): a radix sort
    on the float64 bit patterns, 8 bits per pass, passes over constant bytes skipped (float32
    scores leave most of the mantissa's bytes constant). ``-0.0`` ties with ``0.0``."""
    n = x.shape[0]
    sign = np.uint64(1) << np.uint64(63)
    plain = np.empty(n)
    for i in range(n):
        plain[i] = x[i] + 0.0  # -0.0 becomes 0.0
    bits = plain.view(np.uint64)
    keys = np.empty(n, np.uint64)
    hist = np.zeros((8, 256), np.int64)
    for i in range(n):
        b = bits[i]
        up = ~b if b & sign else b | sign  # increasing with the value
        key = ~up  # increasing as the value decreases
        keys[i] = key
        for byte in range(8):
            hist[byte, np.int64((key >> np.uint64(8 * byte)) & np.uint64(255))] += 1
    idx = np.arange(n)
    tmp_idx = np.empty(n, np.int64)
    tmp_keys = np.empty(n, np.uint64)
    start = np.empty(256, np.int64)
    for byte in range(8):
        if n == 0 or hist[byte].max() == n:
            continue  # every key has the same byte here
        total = 0
        for v in range(256):
            start[v] = total
            total += hist[byte, v]
        shift = np.uint64(8 * byte)
        for i in range(n):
            v = np.int64((keys[i] >> shift) & np.uint64(255))
            tmp_idx[start[v]] = idx[i]
            tmp_keys[start[v]] = keys[i]
            start[v] += 1
        idx, tmp_idx = tmp_idx, idx
        keys, tmp_keys = tmp_keys, keys
    return idx


__all__ = ["argsort_descending", "group_by_label", "sort_run_by_score"]
