"""The devkits' own AP algorithms, written the way the devkits write them: per class, a Python
loop over the detections in score order.

Slow on purpose and kept apart from the fast code (:mod:`danlu.evaluate.voc`,
:mod:`danlu.evaluate.dota`): the tests use these functions as oracles, ``danlu bench eval`` as
the baseline. The definitions followed:

* Pascal VOC: the MATLAB devkit's ``VOCevaldet.m`` (a stable sort of the scores, a match at
  ``ov >= 0.5``) and py-faster-rcnn's ``voc_eval.py`` (``ov > 0.5``); ``plus_one=1`` gives the
  devkit's inclusive pixel areas; difficult ground truth is neither a true nor a false positive.
* DOTA: DOTA_devkit's ``dota_evaluation_task1.py`` (a horizontal pre-filter with ``+1`` pixel
  areas, then the polygon IoU of the ground truth that passed it; here by shapely) and
  ``task2.py`` (horizontal boxes, ``+1`` areas); ``ovmax > 0.5``, VOC07 11-point AP.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> gt = Dataset([Sample(None, 100, 100, Detections(np.array([[0, 0, 10, 10.]]),
    ...                                                  np.array([0])))], ["a"])
    >>> preds = [Detections(np.array([[0, 0, 10, 10.], [50, 50, 60, 60]]), np.array([0, 0]),
    ...                     scores=np.array([0.4, 0.9]))]
    >>> devkit_average_precisions(devkit_group(gt, preds), use_07=False)
    [0.5]
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from danlu.structures import Dataset, Detections

#: ground-truth flags that make a box "difficult" for VOC (neither TP nor FP)
VOC_DIFFICULT = ("difficult", "ignore", "iscrowd")


def devkit_ap(rec: np.ndarray, prec: np.ndarray, use_07: bool) -> float:
    """VOC AP from a recall / precision curve: 11-point (VOC2007) or all-point (VOC2010+)."""
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def devkit_group(gt: Dataset, preds: Sequence[Detections], *, oriented: bool = False,
                 difficult_flags: Sequence[str] = VOC_DIFFICULT) -> dict[int, tuple[Any, ...]]:
    """Per class index: ``(records, npos, image_ids, scores, boxes)`` as the devkits hold them
    after reading their files. ``records[i]`` has the image's ``bbox`` (``[n, 4]`` xyxy, or
    ``[n, 8]`` polygons when ``oriented``) and ``difficult`` flags; ``npos`` counts the
    non-difficult ground truth."""
    out = {}
    for c in range(len(gt.class_names)):
        recs, npos = {}, 0
        for i, s in enumerate(gt):
            d = s.detections
            m = d.labels == c
            diff = np.zeros(len(d), bool)
            for flag in difficult_flags:
                diff |= d.flag(flag)
            geom = d.polygons[m].reshape(-1, 8) if oriented else d.xyxy[m]
            recs[i] = {"bbox": geom.astype(float), "difficult": diff[m]}
            npos += int((~diff[m]).sum())
        ids, conf, boxes = [], [], []
        for i, p in enumerate(preds):
            for k in np.flatnonzero(p.labels == c):
                ids.append(i)
                conf.append(float(p.scores[k]))
                boxes.append((p.polygons[k].reshape(8) if oriented else p.xyxy[k])
                             .astype(float))
        out[c] = (recs, npos, ids, np.array(conf), boxes)
    return out


def _horizontal_overlaps(g: np.ndarray, bb: Sequence[float], plus_one: float) -> np.ndarray:
    bx0, by0, bx1, by1 = bb
    if plus_one:
        iw = np.maximum(np.minimum(g[:, 2], bx1) - np.maximum(g[:, 0], bx0) + plus_one, 0.0)
        ih = np.maximum(np.minimum(g[:, 3], by1) - np.maximum(g[:, 1], by0) + plus_one, 0.0)
        inters = iw * ih
        return inters / ((bx1 - bx0 + plus_one) * (by1 - by0 + plus_one)
                         + (g[:, 2] - g[:, 0] + plus_one) * (g[:, 3] - g[:, 1] + plus_one)
                         - inters)
    # the same formula without the "+ 0" passes: this loop is the timed baseline of
    # `danlu bench eval`, which must not be slowed down
    iw = np.maximum(np.minimum(g[:, 2], bx1) - np.maximum(g[:, 0], bx0), 0.0)
    ih = np.maximum(np.minimum(g[:, 3], by1) - np.maximum(g[:, 1], by0), 0.0)
    inters = iw * ih
    return inters / ((bx1 - bx0) * (by1 - by0) + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1])
                     - inters)


def _ground_truth_polygons(recs: dict[int, dict[str, Any]]) -> dict[int, tuple[Any, Any]]:
    """Per image: the ground-truth polygons as shapely objects and their enclosing xyxy boxes,
    made once (the devkit rebuilds them for every detection; caching them only makes this
    baseline faster)."""
    import shapely

    out = {}
    for i, r in recs.items():
        p = r["bbox"].reshape(-1, 8)
        box = np.stack([p[:, 0::2].min(1), p[:, 1::2].min(1), p[:, 0::2].max(1),
                        p[:, 1::2].max(1)], 1)
        out[i] = (shapely.polygons(p.reshape(-1, 4, 2)), box)
    return out


def _polygon_overlaps(gt: tuple[Any, Any], bb: np.ndarray, plus_one: float,
                      shapely: Any) -> tuple[float, int]:
    """DOTA task 1: the horizontal pre-filter, then the polygon IoU with the ground truth
    that passed it; ``(-inf, -1)`` when none did. ``shapely`` is the module, imported once by
    the caller rather than per detection in this timed loop."""
    g_polys, g_box = gt
    xs, ys = bb[0::2], bb[1::2]
    keep = np.where(_horizontal_overlaps(g_box, (xs.min(), ys.min(), xs.max(), ys.max()),
                                         plus_one) > 0)[0]
    if not len(keep):
        return -np.inf, -1
    gp = g_polys[keep]
    bp = shapely.polygons(bb.reshape(4, 2))
    inter = shapely.area(shapely.intersection(gp, bp))
    ovs = inter / (shapely.area(gp) + shapely.area(bp) - inter)
    return float(np.max(ovs)), int(keep[int(np.argmax(ovs))])


def devkit_average_precisions(grouped: dict[int, tuple[Any, ...]], *, use_07: bool,
                              iou: float = 0.5, match: str = ">=", plus_one: float = 0.0,
                              oriented: bool = False) -> list[float]:
    """AP per class (NaN for a class without non-difficult ground truth), by the devkit loop.

    Args:
        grouped: :func:`devkit_group`'s output.
        use_07: 11-point AP, else all-point.
        iou: the match threshold; ``match`` is ``">="`` (VOCevaldet.m) or ``">"``
            (voc_eval.py, DOTA_devkit).
        plus_one: added to widths and heights (1 for inclusive pixel coordinates; DOTA's
            horizontal pre-filter and task 2 use 1).
        oriented: polygons (DOTA task 1), else xyxy boxes.
    """
    if match not in (">=", ">"):
        raise ValueError(f"match must be '>=' or '>', got {match!r}")
    inclusive = match == ">="
    shapely = importlib.import_module("shapely") if oriented else None
    aps = []
    for c in sorted(grouped):
        recs, npos, ids, conf, boxes = grouped[c]
        det = {i: [False] * len(r["difficult"]) for i, r in recs.items()}
        polys = _ground_truth_polygons(recs) if oriented else {}
        order = np.argsort(-conf, kind="stable")  # MATLAB's sort is stable
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for d, k in enumerate(order):
            r, bb = recs[ids[k]], boxes[k]
            ovmax, jmax = -np.inf, -1
            g = r["bbox"]
            if g.size and oriented:
                ovmax, jmax = _polygon_overlaps(polys[ids[k]], bb, plus_one, shapely)
            elif g.size:
                overlaps = _horizontal_overlaps(g, bb, plus_one)
                ovmax, jmax = np.max(overlaps), int(np.argmax(overlaps))
            if ovmax > iou or (inclusive and ovmax == iou):
                if not r["difficult"][jmax]:
                    if not det[ids[k]][jmax]:
                        tp[d] = 1.0
                        det[ids[k]][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        if npos == 0:
            aps.append(float("nan"))
            continue
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps.append(devkit_ap(tp / float(npos), prec, use_07))
    return aps


def devkit_voc(gt: Dataset, preds: Sequence[Detections], *, use_07: bool, iou: float = 0.5,
               match: str = ">=", plus_one: float = 0.0) -> dict[str, float]:
    """Pascal VOC AP per class name, by the devkit loop."""
    aps = devkit_average_precisions(devkit_group(gt, preds), use_07=use_07, iou=iou,
                                    match=match, plus_one=plus_one)
    return dict(zip(gt.class_names, aps, strict=True))


def devkit_dota(gt: Dataset, preds: Sequence[Detections], *, task: int = 1,
                use_07: bool = True, iou: float = 0.5) -> dict[str, float]:
    """DOTA task 1 (polygons) or task 2 (horizontal boxes) AP per class name, by the devkit
    loop (only the ``difficult`` flag excludes ground truth, as in DOTA's label files)."""
    oriented = task == 1
    grouped = devkit_group(gt, preds, oriented=oriented, difficult_flags=("difficult",))
    aps = devkit_average_precisions(grouped, use_07=use_07, iou=iou, match=">", plus_one=1.0,
                                    oriented=oriented)
    return dict(zip(gt.class_names, aps, strict=True))


__all__ = ["devkit_ap", "devkit_group", "devkit_average_precisions", "devkit_voc",
           "devkit_dota", "VOC_DIFFICULT"]
