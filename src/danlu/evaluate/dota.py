"""DOTA AP: task 1 (oriented boxes, polygon IoU) and task 2 (horizontal boxes), as DOTA_devkit's
``dota_evaluation_task1.py`` / ``dota_evaluation_task2.py`` define them.

Both run the VOC matching of :mod:`danlu.evaluate.voc` per class (detections by decreasing
score, each takes its best-overlapping ground truth, difficult ones included; a difficult match
counts neither way; a second match of a ground truth is a FP), with DOTA_devkit's choices:

* **strict threshold**: a match needs ``IoU > 0.5`` (``ovmax > ovthresh``), not ``>=``;
* **VOC07 11-point AP** by default (``use_07_metric=True`` in the devkit's ``main``);
  ``eleven_point=False`` gives the all-point AP;
* **task 1** computes the exact polygon IoU (:func:`danlu.boxes.polygon.polygon_iou`, convex
  quadrilaterals) of each detection with the ground truth whose enclosing horizontal boxes
  overlap. The devkit pre-filters with the ``+1``-pixel horizontal IoU ``> 0``; since polygons
  whose enclosing boxes do not overlap have polygon IoU 0, the pre-filter never changes the
  result for a positive threshold, and ours skips exactly the pairs that cannot count;
* **task 2** uses DOTA_devkit's ``+1``-pixel IoU on the horizontal boxes
  (``(x2 - x1 + 1) * (y2 - y1 + 1)`` areas), on the coordinates as given;
* ties in score keep the input order (the devkit's unstable ``np.argsort`` leaves them to
  numpy); a class without countable ground truth has AP NaN and is left out of the mAP (the
  devkit divides by zero there).

Detections without polygons are taken as their axis-aligned boxes in task 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from danlu.boxes.polygon import polygon_iou_aligned
from danlu.errors import ConfigError
from danlu.evaluate._common import align_predictions, check_labels, flatten
from danlu.evaluate.result import EvalResult
from danlu.evaluate.voc import Match, voc_style_ap
from danlu.structures import Dataset, Detections


def evaluate_dota(gt: Dataset, predictions: Dataset | Sequence[Detections], *,
                  task: Literal[1, 2] = 1, iou: float = 0.5, eleven_point: bool = True,
                  match: Match = ">") -> EvalResult:
    """DOTA mAP and per-class AP (see the module docstring for the exact rules).

    Args:
        gt: ground truth with ``polygons`` (task 1; boxes without polygons are taken as
            axis-aligned) and optional ``difficult`` flags.
        predictions: one ``Detections`` with scores per ground-truth sample (a list in order,
            or a ``Dataset`` matched by sample id).
        task: 1 for oriented boxes (polygon IoU), 2 for horizontal boxes (``+1`` pixel IoU).
        iou: the matching IoU threshold, in (0, 1].
        eleven_point: VOC07 11-point AP (DOTA_devkit's default); False gives the all-point AP.
        match: ``">"`` (DOTA_devkit, default) or ``">="``.

    Returns:
        :class:`EvalResult` with protocol ``"dota"`` (task 1) or ``"dota-hbb"`` (task 2).

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Dataset, Detections, Sample
        >>> square = np.array([[[10, 10], [50, 10], [50, 50], [10, 50]]], np.float32)
        >>> gt = Dataset([Sample(None, 100, 100, Detections(None, [0], polygons=square), id=0)],
        ...              ["plane"])
        >>> pred = [Detections(None, [0], scores=[0.9], polygons=square + 2)]
        >>> round(evaluate_dota(gt, pred).mAP, 6)
        1.0
    """
    if task not in (1, 2):
        raise ConfigError(f"DOTA task must be 1 or 2, not {task!r}")
    preds = align_predictions(gt, predictions)
    g = flatten(gt.detections(), polygons=task == 1)
    d = flatten(preds, scores=True, polygons=task == 1)

    check_labels(g, len(gt.class_names), gt, "ground truth")
    check_labels(d, len(gt.class_names), gt, "predictions")
    polygon_iou = None
    if task == 1:
        # The enclosing boxes of the polygons pre-filter the pairs (the matcher reads xyxy).
        d.xyxy = _enclosing(d.polygons)
        g.xyxy = _enclosing(g.polygons)

        def polygon_iou(di: np.ndarray, gi: np.ndarray) -> np.ndarray:
            return np.asarray(polygon_iou_aligned(d.polygons[di], g.polygons[gi]), np.float64)

    protocol = "dota" if task == 1 else "dota-hbb"
    return voc_style_ap(g, d, num_images=len(gt), class_names=gt.class_names,
                        iou=iou, match=match, eleven_point=eleven_point, protocol=protocol,
                        plus_one=0.0 if task == 1 else 1.0, polygon_iou=polygon_iou,
                        params={"task": task, "iou": iou, "match": match,
                                "eleven_point": eleven_point})


def _enclosing(p: np.ndarray) -> np.ndarray:
    """``[N, 4, 2]`` -> ``[N, 4]`` enclosing xyxy (elementwise over the 4 vertices: faster than
    a reduction along a length-4 axis)."""
    x, y = p[:, :, 0], p[:, :, 1]
    return np.stack([np.minimum(np.minimum(x[:, 0], x[:, 1]), np.minimum(x[:, 2], x[:, 3])),
                     np.minimum(np.minimum(y[:, 0], y[:, 1]), np.minimum(y[:, 2], y[:, 3])),
                     np.maximum(np.maximum(x[:, 0], x[:, 1]), np.maximum(x[:, 2], x[:, 3])),
                     np.maximum(np.maximum(y[:, 0], y[:, 1]), np.maximum(y[:, 2], y[:, 3]))], 1)


__all__ = ["evaluate_dota"]
