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

import sys
import types
from importlib import import_module
from typing import Any

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


class _CallableModule(types.ModuleType):
    """``danlu.evaluate`` is both this package and, at the package root, the function
    :func:`danlu.evaluate.api.evaluate`: importing the package binds the name ``evaluate`` on
    ``danlu`` to the package, so the package forwards calls to the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> EvalResult:
        return evaluate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(import_module(module), name)
        setattr(self, name, value)
        return value

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(_LAZY))


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["evaluate", "EvalResult", "PROTOCOLS", "evaluate_coco", "evaluate_voc",
           "evaluate_dota", "average_precision", "confusion_matrix", "ConfusionMatrix"]
