"""COCO box metrics: pycocotools' 12 numbers, per-class AP and the precision/recall arrays.

The engine is our own: pycocotools' ``evaluateImg`` and ``accumulate`` compiled with numba
(:mod:`danlu.evaluate._coco_kernels`), categories shared out to threads, on flat arrays built
once from the ``Dataset``: no JSON, no dict per box. It gives pycocotools' numbers to the last
bit (the tests compare the 12 stats and the whole precision / recall arrays with pycocotools on
randomized datasets), and ``benchmarks/eval.py`` times it, end to end from a ``Dataset``,
against hotcoco's ``evaluate`` + ``accumulate`` + ``summarize`` alone at COCO scale.

The conventions are pycocotools' ``COCOeval`` (``iouType="bbox"``):

* images are the ground-truth samples, categories are the labels; the images are taken in
  pycocotools' order, by increasing id when every sample id is a distinct integer (as read
  from a COCO file; pycocotools sorts its image ids), else in sample order. The order decides
  only between detections of equal score in different images;
* boxes are seen as pycocotools sees them: ``xywh`` in float64 (``w = x2 - x1``), IoU by its
  ``bbIou`` arithmetic;
* per image and class, detections in decreasing score order (ties keep the input order), only
  the ``max_dets[-1]`` first; each matches the unmatched ground truth with the highest IoU
  ``>=`` the threshold (``min(t, 1 - 1e-10)``), ground truth that is not ignored first, and
  of equal IoUs the one that comes last; one matched to an ignored ground truth is ignored;
* in the precision / recall curve, detections of all images sorted by decreasing score, ties
  in image order then score rank (pycocotools' stable sort of the per-image lists);
* **crowd** ground truth (``flags["iscrowd"]``) is matched by intersection over the detection's
  area, can absorb any number of detections, and never counts as a miss;
* **area ranges** use the ground truth's COCO ``area`` (``extra["area"]`` when every sample has
  it, e.g. the segment area from a COCO file; else the box area) and the detection's box area;
  a ground truth outside the range is ignored, and so is an unmatched detection outside it;
* **ignored** ground truth (``flags["ignore"]`` or ``flags["difficult"]``) is treated as a
  non-crowd box outside every area range: matching it neither helps nor hurts (pycocotools
  itself overwrites an ``ignore`` field with ``iscrowd``; we give it this meaning). Ground
  truth read from a COCO file (``meta["format"] == "coco"``) has no ignored boxes, as
  pycocotools reads that file: a ``difficult`` attribute there is kept but does not count;
* ``max_dets`` is sorted, as pycocotools sorts it;
* the summary follows ``summarize()`` to the letter, quirks included: ``AP`` is read at
  ``maxDets=100`` (-1 when 100 is not in ``max_dets``), the other AP numbers and ``AR100``,
  ``ARs/m/l`` at ``max_dets[2]``, ``AR1`` / ``AR10`` at ``max_dets[0]`` / ``max_dets[1]``;
* precision is interpolated at the 101 recall thresholds ``0:.01:1`` (the precision envelope
  sampled with ``searchsorted(..., side="left")``), -1 where undefined; a summary number is the
  mean over its defined entries (-1 when there are none), exactly as ``summarize()`` computes it.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> gt = Dataset([Sample(None, 100, 100, Detections([[10, 10, 50, 50]], [0]), id=0)], ["cat"])
    >>> pred = [Detections([[10, 10, 50, 50]], [0], scores=[0.9])]
    >>> r = evaluate_coco(gt, pred)
    >>> round(r.AP, 6), round(r.AP50, 6), r.stats.shape
    (1.0, 1.0, (12,))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from danlu.errors import ConfigError
from danlu.evaluate._coco_kernels import coco_evaluate, xywh_and_area
from danlu.evaluate._common import Flat, align_predictions, check_labels, flatten
from danlu.evaluate.result import COCO_STAT_NAMES, EvalResult
from danlu.structures import Dataset, Detections

#: pycocotools' default area ranges (``[0, 1e5 ** 2]``, ``32 ** 2``, ``96 ** 2``).
AREA_RANGES: dict[str, tuple[float, float]] = {
    "all": (0.0, 1e5 ** 2), "small": (0.0, 32.0 ** 2),
    "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, 1e5 ** 2)}


def default_iou_thresholds() -> np.ndarray:
    """``.50:.05:.95``, built exactly as pycocotools builds it."""
    return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


def default_recall_thresholds() -> np.ndarray:
    """``0:.01:1`` (101 points), built exactly as pycocotools builds it."""
    return np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def coco_columns(gt: Flat, dt: Flat) -> dict[str, np.ndarray]:
    """The arrays the kernel reads, as pycocotools would see the same boxes: ``xywh`` float64
    (``w = x2 - x1``), the ground truth's COCO ``area`` (``extra["area"]``, else ``w * h``),
    the detections' box area ``w * h``, and the ground truth ignored in every area range
    (``ignore`` or ``difficult``).

    Boxes read from a COCO file carry the file's float64 ``xywh`` (``extra["coco_bbox"]``);
    while those still round to the float32 ``xyxy`` held beside them they are used as they
    are, so that a file gives pycocotools' numbers exactly (``w = x2 - x1`` in float32 is not
    the file's ``w``). Boxes moved or scaled since no longer match and fall back to ``xyxy``.
    """
    gbox, gbox_area = _boxes(gt)
    dbox, dbox_area = _boxes(dt)
    garea = gbox_area if gt.area is None else np.ascontiguousarray(gt.area, np.float64)
    return {"g_box": gbox, "g_area": garea, "g_ignore": gt.ignore | gt.difficult,
            "d_box": dbox, "d_area": dbox_area}


def _image_rank(gt: Dataset) -> np.ndarray | None:
    """Each sample's place in pycocotools' image order (by increasing id) when the ids are
    distinct integers and not already in that order, else None (sample order)."""
    ids = [s.id for s in gt.samples]
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in ids):
        return None
    order = sorted(range(len(ids)), key=ids.__getitem__)
    if order == list(range(len(ids))) or len(set(ids)) != len(ids):
        return None
    rank = np.empty(len(ids), np.int64)
    rank[order] = np.arange(len(ids))
    return rank


def _boxes(flat: Flat) -> tuple[np.ndarray, np.ndarray]:
    """``xywh`` float64 and its area ``w * h``: the file's boxes when they match ``xyxy``."""
    b = flat.coco_bbox
    if b is not None and _same_boxes(b, flat.xyxy):
        b = np.ascontiguousarray(b)
        return b, b[:, 2] * b[:, 3]
    return xywh_and_area(flat.xyxy)


def _same_boxes(xywh: np.ndarray, xyxy: np.ndarray) -> bool:
    """True when ``xywh`` rounded as a reader rounds it (``x``, ``x + w`` to float32) gives
    ``xyxy`` exactly."""
    if xywh.shape != xyxy.shape:
        return False
    for k in range(2):  # column by column: no [N, 4] temporaries
        if not (np.array_equal(xywh[:, k].astype(np.float32), xyxy[:, k])
                and np.array_equal((xywh[:, k] + xywh[:, k + 2]).astype(np.float32),
                                   xyxy[:, k + 2])):
            return False
    return True


def summarize(precision: np.ndarray, recall: np.ndarray, iou_thresholds: np.ndarray,
              area_labels: Sequence[str], max_dets: Sequence[int]) -> np.ndarray:
    """pycocotools' 12 summary numbers from the accumulated ``precision`` ``[T, R, K, A, M]``
    and ``recall`` ``[T, K, A, M]`` arrays: means over the entries ``> -1``, -1 when none."""
    labels = list(area_labels)
    dets = list(max_dets)

    def one(ap: bool, iou: float | None = None, area: str = "all", md: int = dets[-1]) -> float:
        a = [i for i, lbl in enumerate(labels) if lbl == area]
        m = [i for i, v in enumerate(dets) if v == md]
        if ap:
            s = precision[:, :, :, a, m]
            if iou is not None:
                s = s[np.where(iou == iou_thresholds)[0]]
        else:
            s = recall[:, :, a, m]
            if iou is not None:
                s = s[np.where(iou == iou_thresholds)[0]]
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    big = dets[2] if len(dets) > 2 else dets[-1]
    # pycocotools' first number takes maxDets=100 whatever max_dets holds (its default
    # argument): -1 when 100 is not among them. Kept, so that the numbers stay identical.
    return np.array([
        one(True, md=100), one(True, 0.5, md=big), one(True, 0.75, md=big),
        one(True, area="small", md=big), one(True, area="medium", md=big),
        one(True, area="large", md=big),
        one(False, md=dets[0]), one(False, md=dets[1] if len(dets) > 1 else dets[-1]),
        one(False, md=big),
        one(False, area="small", md=big), one(False, area="medium", md=big),
        one(False, area="large", md=big)])


def evaluate_coco(gt: Dataset, predictions: Dataset | Sequence[Detections], *,
                  iou_thresholds: Sequence[float] | None = None,
                  max_dets: Sequence[int] = (1, 10, 100),
                  area_ranges: Mapping[str, tuple[float, float]] | None = None) -> EvalResult:
    """COCO box metrics (see the module docstring for the exact conventions).

    Args:
        gt: ground truth; flags ``iscrowd``, ``ignore`` / ``difficult``; COCO ``area`` from
            ``extra["area"]``.
        predictions: one ``Detections`` with scores per ground-truth sample (a list in order,
            or a ``Dataset`` matched by sample id).
        iou_thresholds: default ``.50:.05:.95``.
        max_dets: detections per image and class considered, default ``(1, 10, 100)``.
        area_ranges: label -> ``(min, max)`` area, default pycocotools' all / small / medium /
            large. The summary looks the labels ``all``, ``small``, ``medium``, ``large`` up by
            name (-1 for a missing one); per-class AP uses the first range.

    Returns:
        :class:`EvalResult` with the 12 ``stats``, the named numbers, ``per_class`` AP,
        ``precision`` ``[T, R, K, A, M]`` / ``recall`` ``[T, K, A, M]`` and PR ``curves``.
    """
    thresholds = (default_iou_thresholds() if iou_thresholds is None
                  else np.asarray(iou_thresholds, np.float64).reshape(-1))
    ranges = dict(AREA_RANGES if area_ranges is None else area_ranges)
    dets = sorted(int(m) for m in max_dets)
    if not dets or not len(thresholds) or not ranges:
        raise ConfigError("COCO evaluation needs IoU thresholds, max_dets and area ranges")
    num_classes = len(gt.class_names)
    preds = align_predictions(gt, predictions)
    g = flatten(gt.detections(), share=True)
    d = flatten(preds, scores=True, share=True)
    check_labels(g, num_classes, gt, "ground truth")
    check_labels(d, num_classes, gt, "predictions")
    c = coco_columns(g, d)
    if gt.meta.get("format") == "coco":  # a COCO file: what pycocotools sees in it
        c["g_ignore"] = np.zeros_like(c["g_ignore"])
    area_rng = np.array([[float(lo), float(hi)] for lo, hi in ranges.values()], np.float64)
    rank = _image_rank(gt)
    if rank is not None:  # the images in pycocotools' order
        g.image, d.image = rank[g.image], rank[d.image]
    precision, recall = coco_evaluate(
        g.image, g.labels, c["g_box"], c["g_area"], g.crowd, c["g_ignore"], d.image, d.labels,
        c["d_box"], c["d_area"], d.scores, num_classes, np.ascontiguousarray(thresholds),
        area_rng, np.array(dets, np.int64), default_recall_thresholds())
    stats = summarize(precision, recall, thresholds, list(ranges), dets)
    return _result(gt, g, precision, recall, stats, thresholds, ranges, dets)


def _result(gt: Dataset, g: Flat, precision: np.ndarray, recall: np.ndarray, stats: np.ndarray,
            thresholds: np.ndarray, ranges: dict, dets: list[int]) -> EvalResult:
    names = list(gt.class_names)
    per_class: dict[str, float] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    hit = np.flatnonzero(np.isclose(thresholds, 0.5))
    t50 = int(hit[0]) if len(hit) else 0
    rec_thrs = default_recall_thresholds()
    for k, name in enumerate(names):
        s = precision[:, :, k, 0, -1]
        per_class[name] = float(np.mean(s[s > -1])) if (s > -1).any() else float("nan")
        curve = precision[t50, :, k, 0, -1]
        curves[name] = (rec_thrs, np.where(curve > -1, curve, np.nan))
    counted = ~(g.crowd | g.ignore | g.difficult)
    npos = np.bincount(g.labels[counted], minlength=len(names))[:len(names)]
    return EvalResult(
        protocol="coco", class_names=names, stats=stats,
        metrics=dict(zip(COCO_STAT_NAMES, stats.tolist(), strict=True)), per_class=per_class,
        num_gt={name: int(npos[k]) for k, name in enumerate(names)}, curves=curves,
        precision=precision, recall=recall,
        params={"iou_thresholds": thresholds.tolist(), "max_dets": dets,
                "area_ranges": {k: list(v) for k, v in ranges.items()}})


__all__ = ["evaluate_coco", "summarize", "coco_columns", "AREA_RANGES",
           "default_iou_thresholds", "default_recall_thresholds"]
