"""numba kernels of the COCO box evaluation: pycocotools' ``evaluateImg`` and ``accumulate`` on
flat arrays, one category per task, categories in parallel.

The kernels come in families, each in its module and loaded with it: the matching of one
(image, category) (:mod:`danlu.evaluate._coco_match`, conventions there), the accumulation of
one category (:mod:`danlu.evaluate._coco_accumulate`) and the stable sorts
(:mod:`danlu.evaluate._sorting`, shared with DOTA). This module walks the images of a
category and shares the categories out to threads.

All conventions are pycocotools' ``COCOeval`` (``iouType="bbox"``; the oracle in the tests):
per (image, category) detections by decreasing score, ties in input order, only the first
``max_dets[-1]``; images in the order of their index; categories are independent.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

from danlu.evaluate._coco_accumulate import accumulate
from danlu.evaluate._coco_match import match_group, xywh_and_area
from danlu.evaluate._sorting import argsort_descending, group_by_label, sort_run_by_score


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
        sort_run_by_score(di, dp, de, d_score)
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
        match_group(gi, gp, ng, di, dp, nd, g_box, g_area, g_crowd, g_ignore, d_box, d_area,
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
    accumulate(order, rank, area, best_iou, state, npig, iou_thrs, area_rng, max_dets,
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
        g_image, g_label: ``[G]`` int64 image index (its rank in the image order) and class
            of each ground truth; rows in any image order, input order within an image.
        g_box: ``[G, 4]`` float64 ``xywh``; g_area: ``[G]`` float64 COCO ``area`` (for the area
            ranges); g_crowd: ``[G]`` bool ``iscrowd``; g_ignore: ``[G]`` bool, ignored in
            every area range.
        d_image, d_label, d_box, d_area, d_score: ``[D]`` the detections likewise;
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
    g_order, g_start = group_by_label(g_label, num_classes, g_image)
    d_order, d_start = group_by_label(d_label, num_classes, d_image)
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
