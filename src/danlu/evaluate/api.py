"""The one entry point: :func:`evaluate` a set of predictions against ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from danlu.errors import ConfigError
from danlu.evaluate.result import EvalResult
from danlu.structures import Dataset, Detections

#: Accepted ``protocol`` values.
PROTOCOLS = ("coco", "voc07", "voc12", "dota", "dota-hbb")


def evaluate(gt: Dataset, predictions: Dataset | Sequence[Detections], protocol: str = "coco",
             **options: Any) -> EvalResult:
    """Evaluate detections against ground truth under one protocol.

    Args:
        gt: the ground-truth :class:`~danlu.structures.Dataset` (labels index its
            ``class_names``).
        predictions: one :class:`~danlu.structures.Detections` with scores per ground-truth
            sample, as a list in sample order or a ``Dataset`` matched by sample id.
        protocol: one of

            * ``"coco"``: pycocotools' 12 numbers (:func:`~danlu.evaluate.coco.evaluate_coco`;
              options ``iou_thresholds``, ``max_dets``, ``area_ranges``);
            * ``"voc07"`` / ``"voc12"``: Pascal VOC 11-point / all-point AP
              (:func:`~danlu.evaluate.voc.evaluate_voc`; options ``iou=0.5``,
              ``match=">="`` as the MATLAB devkit or ``">"`` as py-faster-rcnn);
            * ``"dota"`` / ``"dota-hbb"``: DOTA_devkit task 1 (polygon IoU) / task 2 (horizontal
              ``+1`` IoU) (:func:`~danlu.evaluate.dota.evaluate_dota`; options ``iou=0.5``,
              ``eleven_point=True``, ``match=">"``).
        **options: passed to the protocol's function.

    Returns:
        :class:`~danlu.evaluate.result.EvalResult`.

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Dataset, Detections, Sample
        >>> gt = Dataset([Sample(None, 100, 100, Detections([[10, 10, 50, 50]], [0]), id=0)],
        ...              ["cat"])
        >>> pred = [Detections([[10, 10, 50, 50], [60, 60, 90, 90]], [0, 0], scores=[0.9, 0.8])]
        >>> r = evaluate(gt, pred, protocol="coco")
        >>> round(r.AP, 6), round(r.AR100, 6), round(r.per_class["cat"], 6)
        (1.0, 1.0, 1.0)
        >>> round(evaluate(gt, pred, protocol="voc07").mAP, 6)
        1.0
    """
    if not isinstance(gt, Dataset):
        raise ConfigError(f"evaluate: gt must be a Dataset, not {type(gt).__name__}")
    if protocol == "coco":
        from danlu.evaluate.coco import evaluate_coco

        return evaluate_coco(gt, predictions, **options)
    if protocol in ("voc07", "voc12"):
        from danlu.evaluate.voc import evaluate_voc

        return evaluate_voc(gt, predictions, metric=protocol, **options)
    if protocol in ("dota", "dota-hbb"):
        from danlu.evaluate.dota import evaluate_dota

        return evaluate_dota(gt, predictions, task=1 if protocol == "dota" else 2, **options)
    raise ConfigError(f"unknown protocol {protocol!r}",
                      hint="choose one of " + ", ".join(PROTOCOLS))


__all__ = ["evaluate", "PROTOCOLS"]
