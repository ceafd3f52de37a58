"""numba kernels of the COCO box evaluation: pycocotools' ``evaluateImg`` and ``accumulate`` on
flat arrays, one category per task, categories in parallel.

Conventions (all pycocotools' ``COCOeval``, ``iouType="bbox"``; the oracle in the tests):

* boxes are ``xywh`` float64, as pycocotools reads them; the IoU is its ``bbIou``:
  ``w = min(x_d + w_d, x_g + w_g) - max(x_d, x_g)`` (0 unless ``> 0``), ``h`` likewise,
  ``inter / (area_d + area_g - inter)`` with box areas ``w * h``, and ``inter / area_d`` for a
  crowd ground truth;
* per (image, category): detections by decreasing score, ties in input order, only the first
  ``max_dets[-1]``; ground truth that is not ignored first (ignored: crowd, flagged, or its
  ``area`` outside the range), ties in input order;
* matching, per IoU threshold ``t``, detection by detection: scan the ground truth in that order,
  skip matched non-crowd ones, stop at the first ignored one once a non-ignored match is held,
  and keep the last one whose IoU reaches the running threshold (``min(t, 1 - 1e-10)``, raised
  to each IoU taken); a detection matched to an ignored ground truth is ignored, an unmatched one
  whose box area is outside the range is ignored;
* accumulation per (category, area range, max dets): the detections with a per-image rank below
  ``max_dets`` sorted by decreasing score, ties by image then rank (pycocotools' stable sort of
  the per-image lists concatenated in image order); precision ``tp / (tp + fp + eps)``, recall
  ``tp / npig``; the precision envelope sampled at the recall thresholds with
  ``searchsorted(..., side="left")``, 0 past the last recall; -1 where ``npig == 0``.

Categories are independent: :func:`coco_evaluate` shares them out to threads.

The envelope needs the precision only where a true positive lands: between two true positives
the precision falls, so the running maximum from the right is always taken at one of them, and
the first point reaching a recall threshold is one too. The values are the same float64 numbers
pycocotools computes, in the same order of operations.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

_TP, _IGNORED = 1, 2  # a detection's state at one (area range, threshold); 0: unmatched
_EPS = float(np.spacing(1))  # pycocotools' np.spacing(1) in the precision's denominator
_MAX_IOU = 1.0 - 1e-10  # pycocotools caps each threshold at 1 - 1e-10


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
def _group_by_label(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A stable counting sort on the label: indices ``[N]`` and class boundaries ``[C + 1]``."""
    start = np.zeros(num_classes + 1, np.int64)
    for i in range(labels.shape[0]):
        start[labels[i] + 1] += 1
    for c in range(num_classes):
        start[c + 1] += start[c]
    fill = start[:-1].copy()
    out = np.empty(labels.shape[0], np.int64)
    for i in range(labels.shape[0]):
        c = labels[i]
        out[fill[c]] = i
        fill[c] += 1
    return out, start


@numba.njit(cache=True, nogil=True)
def _sort_run_by_score(idx: np.ndarray, s: int, e: int, scores: np.ndarray) -> None:
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


@numba.njit(cache=True, nogil=True)
def _match_group(gi: np.ndarray, g0: int, ng: int, di: np.ndarray, d0: int, nd: int,
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
        lowest = min(lowest, min(iou_thrs[t], _MAX_IOU))
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
            thr = min(iou_thrs[t], _MAX_IOU)
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
                    state[d0 + j, row] = _IGNORED if gig[hit] else _TP


@numba.njit(cache=True, nogil=True)
def _sample(pr: np.ndarray, count: int, total: float, rec_thrs: np.ndarray, out: np.ndarray
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
def _accumulate(order: np.ndarray, rank: np.ndarray, area: np.ndarray, best_iou: np.ndarray,
                state: np.ndarray, npig: np.ndarray, iou_thrs: np.ndarray,
                area_rng: np.ndarray, max_dets: np.ndarray, rec_thrs: np.ndarray, k: int,
                precision: np.ndarray, recall: np.ndarray) -> None:
    """``accumulate`` for category ``k``: detections in ``order`` (decreasing score, then image,
    then rank) with their ``rank``, box ``area``, ``best_iou`` and ``state`` from
    :func:`_match_group`; fills ``precision[:, :, k]`` and ``recall[:, k]`` where
    ``npig[a] > 0``.

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
        lowest = min(lowest, min(iou_thrs[t], _MAX_IOU))
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
                    if state[order[p], row] == _TP:
                        tp = float(ntp + 1)
                        fp = float(plain_fp[p] - fix)
                        pr[ntp] = tp / (fp + tp + _EPS)
                        ntp += 1
                    if not (s_area[p] < lo or s_area[p] > hi):
                        fix += 1
                recall[t, k, a, m] = float(ntp) / total
                _sample(pr, ntp, total, rec_thrs, precision[t, :, k, a, m])


@numba.njit(cache=True, nogil=True)
def _evaluate_category(k: int, gi: np.ndarray, di: np.ndarray, g_image: np.ndarray,
                       g_box: np.ndarray, g_area: np.ndarray, g_crowd: np.ndarray,
                       g_ignore: np.ndarray, d_image: np.ndarray, d_box: np.ndarray,
                       d_area: np.ndarray, d_score: np.ndarray, iou_thrs: np.ndarray,
                       area_rng: np.ndarray, max_dets: np.ndarray, rec_thrs: np.ndarray,
                       precision: np.ndarray, recall: np.ndarray) -> None:
    """Match and accumulate category ``k``: ground truth ``gi`` and detections ``di`` of the
    category, both in image order (input order within an image). ``di`` is sorted in place."""
    num_t = iou_thrs.shape[0]
    num_a = area_rng.shape[0]
    keep = max_dets[max_dets.shape[0] - 1]
    nd_all = di.shape[0]
    ng_all = gi.shape[0]
    state = np.zeros((nd_all, num_a * num_t), np.int8)
    rank = np.empty(nd_all, np.int64)
    npig = np.zeros(num_a, np.int64)
    best_iou = np.empty(nd_all)
    area = np.empty(nd_all)
    ious = np.empty(64)
    gorder = np.empty(16, np.int64)
    gig = np.empty(16, np.bool_)
    gtm = np.empty(16, np.bool_)
    gflags = np.empty(16 * num_a, np.bool_)
    dp = 0
    gp = 0
    kept = 0
    while dp < nd_all or gp < ng_all:
        image = min(d_image[di[dp]] if dp < nd_all else 1 << 62,
                    g_image[gi[gp]] if gp < ng_all else 1 << 62)
        de = dp
        while de < nd_all and d_image[di[de]] == image:
            de += 1
        ge = gp
        while ge < ng_all and g_image[gi[ge]] == image:
            ge += 1
        _sort_run_by_score(di, dp, de, d_score)
        for j in range(dp, de):
            rank[j] = j - dp
            area[j] = d_area[di[j]]
        nd = min(de - dp, keep)
        ng = ge - gp
        kept += nd
        if nd * ng > ious.shape[0]:
            ious = np.empty(2 * nd * ng)
        if ng > gorder.shape[0]:
            gorder = np.empty(2 * ng, np.int64)
            gig = np.empty(2 * ng, np.bool_)
            gtm = np.empty(2 * ng, np.bool_)
            gflags = np.empty(2 * ng * num_a, np.bool_)
        _match_group(gi, gp, ng, di, dp, nd, g_box, g_area, g_crowd, g_ignore, d_box, d_area,
                     iou_thrs, area_rng, state, best_iou, npig, ious, gorder, gig, gtm, gflags)
        dp, gp = de, ge
    # The kept detections (per-image rank below max_dets[-1]) by decreasing score; the stable
    # sort keeps image order, then rank, on ties.
    local = np.empty(kept, np.int64)
    kept_scores = np.empty(kept)
    m = 0
    for j in range(nd_all):
        if rank[j] < keep:
            local[m] = j
            kept_scores[m] = d_score[di[j]]
            m += 1
    order = local[argsort_descending(kept_scores)]
    _accumulate(order, rank, area, best_iou, state, npig, iou_thrs, area_rng, max_dets,
                rec_thrs, k, precision, recall)


def coco_evaluate(g_image: np.ndarray, g_label: np.ndarray, g_box: np.ndarray,
                  g_area: np.ndarray, g_crowd: np.ndarray, g_ignore: np.ndarray,
                  d_image: np.ndarray, d_label: np.ndarray, d_box: np.ndarray,
                  d_area: np.ndarray, d_score: np.ndarray, num_classes: int,
                  iou_thrs: np.ndarray, area_rng: np.ndarray, max_dets: np.ndarray,
                  rec_thrs: np.ndarray, *, workers: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' ``evaluate`` + ``accumulate`` on flat arrays.

    Args:
        g_image, g_label: ``[G]`` int64 image index and class of each ground truth, in image
            order (input order within an image).
        g_box: ``[G, 4]`` float64 ``xywh``; g_area: ``[G]`` float64 COCO ``area`` (for the area
            ranges); g_crowd: ``[G]`` bool ``iscrowd``; g_ignore: ``[G]`` bool, ignored in
            every area range.
        d_image, d_label, d_box, d_area, d_score: ``[D]`` the detections likewise (image order);
            ``d_area`` is the box area ``w * h``.
        num_classes: categories ``0..num_classes - 1``.
        iou_thrs: ``[T]``; area_rng: ``[A, 2]``; max_dets: ``[M]`` int64, increasing;
        rec_thrs: ``[R]`` increasing.
        workers: threads, each taking a share of the categories (largest first to the least
            loaded); default ``numba.get_num_threads()``. Plain threads running GIL-free kernels
            rather than numba's parallel loops: their waits block instead of spinning, which
            keeps a busy machine from slowing the work down several times.

    Returns:
        ``precision`` ``[T, R, K, A, M]`` and ``recall`` ``[T, K, A, M]``, -1 where undefined.
    """
    num_t, num_r = iou_thrs.shape[0], rec_thrs.shape[0]
    num_a, num_m = area_rng.shape[0], max_dets.shape[0]
    precision = np.full((num_t, num_r, num_classes, num_a, num_m), -1.0)
    recall = np.full((num_t, num_classes, num_a, num_m), -1.0)
    g_order, g_start = _group_by_label(g_label, num_classes)
    d_order, d_start = _group_by_label(d_label, num_classes)
    size = np.diff(d_start) + np.diff(g_start)
    workers = max(1, min(numba.get_num_threads() if workers is None else workers,
                         int((size > 0).sum())))
    owner = np.zeros(num_classes, np.int64)
    load = np.zeros(workers, np.int64)
    for k in np.argsort(-size, kind="stable"):
        owner[k] = int(np.argmin(load))
        load[owner[k]] += size[k] + 1

    def run(w: int) -> None:
        _evaluate_share(w, owner, g_order, g_start, d_order, d_start, g_image, g_box, g_area,
                        g_crowd, g_ignore, d_image, d_box, d_area, d_score, iou_thrs, area_rng,
                        max_dets, rec_thrs, precision, recall)

    if workers == 1:
        run(0)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, range(workers)))
    return precision, recall


@numba.njit(cache=True, nogil=True)
def _evaluate_share(w: int, owner: np.ndarray, g_order: np.ndarray, g_start: np.ndarray,
                    d_order: np.ndarray, d_start: np.ndarray, g_image: np.ndarray,
                    g_box: np.ndarray, g_area: np.ndarray, g_crowd: np.ndarray,
                    g_ignore: np.ndarray, d_image: np.ndarray, d_box: np.ndarray,
                    d_area: np.ndarray, d_score: np.ndarray, iou_thrs: np.ndarray,
                    area_rng: np.ndarray, max_dets: np.ndarray, rec_thrs: np.ndarray,
                    precision: np.ndarray, recall: np.ndarray) -> None:
    """Evaluate the categories ``k`` with ``owner[k] == w``.

    Each category's rows are first copied out (category-major, image order kept): its boxes
    then lie together in memory and the work reads them from cache rather than from all over
    the input; random reads cost more than the arithmetic here.
    """
    for k in range(owner.shape[0]):
        if owner[k] != w:
            continue
        gsel = g_order[g_start[k]:g_start[k + 1]]
        dsel = d_order[d_start[k]:d_start[k + 1]]
        if gsel.shape[0] == 0 and dsel.shape[0] == 0:
            continue
        _evaluate_category(k, np.arange(gsel.shape[0]), np.arange(dsel.shape[0]),
                           g_image[gsel], g_box[gsel], g_area[gsel], g_crowd[gsel],
                           g_ignore[gsel], d_image[dsel], d_box[dsel], d_area[dsel],
                           d_score[dsel], iou_thrs, area_rng, max_dets, rec_thrs, precision,
                           recall)


__all__ = ["coco_evaluate", "argsort_descending", "xywh_and_area"]
