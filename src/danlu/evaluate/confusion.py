"""A detection confusion matrix with a background row and column.

Per image, predictions with ``score >= score`` are matched to ground truth *across classes*:
pairs with ``IoU >= iou`` are taken greedily by decreasing IoU (then decreasing score), each box
at most once. A matched pair adds one to ``matrix[true, predicted]``; an unmatched ground truth
adds to ``matrix[true, background]`` (a miss); an unmatched prediction adds to
``matrix[background, predicted]`` (a false alarm). Ground truth flagged ``iscrowd``, ``ignore``
or ``difficult`` takes part in the matching but neither it nor its match is counted. Oriented
boxes use the polygon IoU when both sides carry polygons.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> gt = Dataset([Sample(None, 100, 100, Detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1]),
    ...                      id=0)], ["cat", "dog"])
    >>> pred = [Detections([[0, 0, 10, 10], [50, 50, 60, 60], [80, 80, 90, 90]], [0, 0, 1],
    ...                    scores=[0.9, 0.8, 0.7])]
    >>> cm = confusion_matrix(gt, pred)
    >>> cm.matrix.tolist()  # rows: cat, dog, background; columns: cat, dog, background
    [[1, 0, 0], [1, 0, 0], [0, 1, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from danlu.evaluate._common import align_predictions, check_labels, flatten
from danlu.structures import Dataset, Detections


@dataclass
class ConfusionMatrix:
    """``matrix[C + 1, C + 1]``: rows are true classes then background, columns predicted
    classes then background. ``false_positives`` / ``false_negatives`` count, per image, the
    predictions and ground truth not matched with the right class."""

    matrix: np.ndarray
    class_names: list[str]
    iou: float
    score: float
    false_positives: np.ndarray
    false_negatives: np.ndarray

    @property
    def labels(self) -> list[str]:
        """Row / column names: the classes, then ``"background"``."""
        return [*self.class_names, "background"]

    def to_dict(self) -> dict:
        """A JSON-friendly dict."""
        return {"labels": self.labels, "matrix": self.matrix.tolist(), "iou": self.iou,
                "score": self.score}


def match_image(gt: Detections, pred: Detections, iou: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy class-agnostic matching of one image: for each ground truth the index of its
    prediction (-1 when none), and for each prediction its ground truth (-1 when none)."""
    g_match = np.full(len(gt), -1, np.int64)
    p_match = np.full(len(pred), -1, np.int64)
    if not len(gt) or not len(pred):
        return g_match, p_match
    if gt.polygons is not None and pred.polygons is not None:
        from danlu.boxes.polygon import polygon_iou

        ious = np.asarray(polygon_iou(gt.polygons, pred.polygons), np.float64)
    else:
        from danlu.boxes.iou import box_iou  # here: danlu.boxes loads torch

        ious = np.asarray(box_iou(gt.xyxy.astype(np.float64), pred.xyxy.astype(np.float64)))
    gi, pi = np.nonzero(ious >= iou)
    scores = pred.scores if pred.scores is not None else np.zeros(len(pred))
    order = np.lexsort((-scores[pi], -ious[gi, pi]))
    for k in order:
        g, p = gi[k], pi[k]
        if g_match[g] < 0 and p_match[p] < 0:
            g_match[g], p_match[p] = p, g
    return g_match, p_match


def confusion_matrix(gt: Dataset, predictions: Dataset | Sequence[Detections], *,
                     iou: float = 0.5, score: float = 0.25) -> ConfusionMatrix:
    """The confusion matrix including background (see the module docstring).

    Args:
        gt: ground truth.
        predictions: one ``Detections`` with scores per ground-truth sample.
        iou: a pair matches at ``IoU >= iou``.
        score: predictions below this score are dropped.

    Returns:
        :class:`ConfusionMatrix`.
    """
    preds = align_predictions(gt, predictions)
    c = len(gt.class_names)
    check_labels(flatten(gt.detections()), c, gt, "ground truth")
    check_labels(flatten(preds), c, gt, "predictions")
    m = np.zeros((c + 1, c + 1), np.int64)
    fps = np.zeros(len(gt), np.int64)
    fns = np.zeros(len(gt), np.int64)
    for k, (sample, pred) in enumerate(zip(gt.samples, preds, strict=True)):
        g = sample.detections
        p = pred.filter(min_score=score) if len(pred) else pred
        g_match, p_match = match_image(g, p, iou)
        skip = g.flag("iscrowd") | g.flag("ignore") | g.flag("difficult")
        for gi in range(len(g)):
            if skip[gi]:
                continue
            pi = g_match[gi]
            t = g.labels[gi]
            if pi < 0:
                m[t, c] += 1
                fns[k] += 1
            else:
                m[t, p.labels[pi]] += 1
                if p.labels[pi] != t:
                    fns[k] += 1
                    fps[k] += 1
        for pi in np.flatnonzero(p_match < 0):
            m[c, p.labels[pi]] += 1
            fps[k] += 1
    return ConfusionMatrix(m, list(gt.class_names), float(iou), float(score), fps, fns)


__all__ = ["confusion_matrix", "ConfusionMatrix", "match_image"]
