"""Evaluation: COCO metrics, Pascal VOC AP (2007 / 2010+), DOTA oriented and horizontal AP,
a confusion matrix with background, and readable reports.

Start from :func:`evaluate`; the protocol functions are importable on their own.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> gt = Dataset([Sample(None, 100, 100, Detections([[10, 10, 50, 50]], [0]), id=0)], ["cat"])
    >>> r = evaluate(gt, [Detections([[10, 10, 50, 50]], [0], scores=[0.9])], protocol="voc12")
    >>> round(r.mAP, 6)
    1.0
"""

from __future__ import annotations

from danlu._entry import lazy_attributes
from danlu.evaluate.api import PROTOCOLS, evaluate
from danlu.evaluate.result import EvalResult

# name -> the module defining it, imported on first use: a COCO evaluation loads neither the
# VOC / DOTA kernels nor danlu.boxes (and so torch), which the confusion matrix and DOTA need.
_LAZY = {
    "evaluate_coco": "danlu.evaluate.coco",
    "evaluate_voc": "danlu.evaluate.voc",
    "average_precision": "danlu.evaluate.voc",
    "evaluate_dota": "danlu.evaluate.dota",
    "confusion_matrix": "danlu.evaluate.confusion",
    "ConfusionMatrix": "danlu.evaluate.confusion",
}


__getattr__ = lazy_attributes(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["evaluate", "EvalResult", "PROTOCOLS", "evaluate_coco", "evaluate_voc",
           "evaluate_dota", "average_precision", "confusion_matrix", "ConfusionMatrix"]
