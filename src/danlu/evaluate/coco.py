"""COCO box metrics: pycocotools' 12 numbers, per-class AP and the precision/recall arrays.

The engine is `hotcoco <https://github.com/derekallman/hotcoco>`_ (a Rust port of pycocotools
with the same numbers, about 100x faster), fed straight from arrays: no JSON, no dict per box.
The conventions are pycocotools' ``COCOeval`` (``iouType="bbox"``):

* images are the ground-truth samples (image id = sample index), categories are the labels;
* a detection matches the unmatched ground truth with the highest IoU ``>=`` the threshold
  (``min(t, 1 - 1e-10)``), per image and class, in decreasing score order; ties keep the input
  order; only the ``max_dets[-1]`` best-scored detections per image and class count;
* **crowd** ground truth (``flags["iscrowd"]``) is matched by intersection over the detection's
  area, can absorb any number of detections, and never counts as a miss;
* **area ranges** use the ground truth's COCO ``area`` (``extra["area"]`` when every sample has
  it, e.g. the segment area from a COCO file; else the box area) and the detection's box area;
  a ground truth outside the range is ignored, and so is an unmatched detection outside it;
* **ignored** ground truth (``flags["ignore"]`` or ``flags["difficult"]``) is treated as a
  non-crowd box outside every area range: matching it neither helps nor hurts (pycocotools
  itself overwrites an ``ignore`` field with ``iscrowd``; we give it this meaning);
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

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from danlu.errors import ConfigError
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


def coco_arrays(gt: Flat, dt: Flat) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The COCO view of flat arrays: ground-truth columns (``image_ids``, ``category_ids``,
    ``boxes`` xywh, ``area``, ``iscrowd``) and the ``[N, 7]`` detection array
    ``[image_id, x, y, w, h, score, category_id]`` that ``loadRes`` takes."""
    gxywh = np.concatenate([gt.xyxy[:, :2], gt.xyxy[:, 2:] - gt.xyxy[:, :2]], axis=1)
    area = gt.area.copy() if gt.area is not None else gxywh[:, 2] * gxywh[:, 3]
    area[gt.ignore | gt.difficult] = -np.inf  # outside every area range: ignored
    columns = {"image_ids": gt.image, "category_ids": gt.labels, "boxes": gxywh, "area": area,
               "iscrowd": gt.crowd}
    dt_array = np.empty((len(dt), 7), np.float64)
    dt_array[:, 0] = dt.image
    dt_array[:, 1:3] = dt.xyxy[:, :2]
    dt_array[:, 3:5] = dt.xyxy[:, 2:] - dt.xyxy[:, :2]
    dt_array[:, 5] = dt.scores
    dt_array[:, 6] = dt.labels
    return columns, dt_array


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
    import hotcoco

    thresholds = (default_iou_thresholds() if iou_thresholds is None
                  else np.asarray(iou_thresholds, np.float64).reshape(-1))
    ranges = dict(AREA_RANGES if area_ranges is None else area_ranges)
    dets = [int(m) for m in max_dets]
    if not dets or not len(thresholds) or not ranges:
        raise ConfigError("COCO evaluation needs IoU thresholds, max_dets and area ranges")
    num_classes = len(gt.class_names)
    preds = align_predictions(gt, predictions)
    g = flatten(gt.detections())
    d = flatten(preds, scores=True)
    check_labels(g, num_classes, gt, "ground truth")
    check_labels(d, num_classes, gt, "predictions")
    columns, dt_array = coco_arrays(g, d)
    images = [{"id": i, "width": s.width, "height": s.height} for i, s in enumerate(gt.samples)]
    cats = [{"id": c, "name": name} for c, name in enumerate(gt.class_names)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coco_gt = hotcoco.COCO.from_arrays(
            images, cats, columns["image_ids"], columns["category_ids"], columns["boxes"],
            area=columns["area"], iscrowd=columns["iscrowd"])
        coco_dt = coco_gt.load_res(dt_array)
        ev = hotcoco.COCOeval(coco_gt, coco_dt, "bbox")
        p = ev.params
        p.iou_thrs = thresholds.tolist()
        p.max_dets = dets
        p.area_rng = [[float(lo), float(hi)] for lo, hi in ranges.values()]
        p.area_rng_lbl = list(ranges)
        p.img_ids = list(range(len(gt)))
        p.cat_ids = list(range(num_classes))
        ev.evaluate()
        ev.accumulate()
    acc = ev.eval
    precision = np.asarray(acc["precision"], np.float64)
    recall = np.asarray(acc["recall"], np.float64)
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


__all__ = ["evaluate_coco", "summarize", "coco_arrays", "AREA_RANGES",
           "default_iou_thresholds", "default_recall_thresholds"]
