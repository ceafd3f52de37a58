"""Validation during training: which protocol judges the model, and which checkpoint is best.

* :func:`protocol_for` follows the data: a validation set with oriented boxes (polygons) is
  judged by DOTA task 1 (polygon IoU), any other by COCO. ``val_protocol`` in the config
  overrides it (``coco``, ``voc07``, ``voc12``, ``dota``, ``dota-hbb``).
* :class:`BestRule` says which number makes a checkpoint ``best.pt``: by default the protocol's
  headline (COCO ``AP``, otherwise ``mAP``), higher is better; ``best_metric`` / ``best_mode``
  choose another (``AP50``, or a loss-like number with ``min``).
* :class:`Validator` runs the model over the validation images through a
  :class:`~danlu.infer.predictor.Predictor` and evaluates.

Example:
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> import numpy as np
    >>> square = np.array([[[0, 0], [4, 0], [4, 4], [0, 4]]], np.float32)
    >>> protocol_for(Dataset([Sample(None, 8, 8, Detections(None, [0], polygons=square))], ["a"]))
    'dota'
    >>> rule = BestRule.for_protocol("coco")
    >>> rule.metric, rule.improves(0.4, None), rule.improves(0.3, 0.4)
    ('AP', True, False)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from danlu.errors import ConfigError
from danlu.structures import Dataset
from danlu.train.config import VAL_PROTOCOLS as PROTOCOLS


def protocol_for(dataset: Dataset | None) -> str:
    """``dota`` when any validation sample has oriented boxes, else ``coco``."""
    if dataset is None:
        return "coco"
    oriented = any(s.detections.polygons is not None and len(s.detections)
                   for s in dataset.samples)
    return "dota" if oriented else "coco"


def headline_metric(protocol: str) -> str:
    """The number a protocol reports first: ``AP`` (COCO) or ``mAP`` (VOC, DOTA)."""
    return "AP" if protocol == "coco" else "mAP"


@dataclass(frozen=True)
class BestRule:
    """Which validation number makes a checkpoint the best, and in which direction.

    Args:
        metric: a key of the validation metrics (``AP``, ``AP50``, ``mAP`` ...).
        mode: ``max`` (higher is better) or ``min``.
    """

    metric: str = "AP"
    mode: str = "max"

    def __post_init__(self) -> None:
        if self.mode not in ("max", "min"):
            raise ConfigError(f"best_mode must be max or min, got {self.mode!r}")

    @classmethod
    def for_protocol(cls, protocol: str, metric: str = "auto", mode: str = "max") -> BestRule:
        """The rule for a protocol: its headline metric unless ``metric`` names another."""
        return cls(headline_metric(protocol) if metric == "auto" else metric, mode)

    def value(self, metrics: dict[str, Any]) -> float:
        """This rule's number in ``metrics`` (NaN when absent)."""
        if self.metric not in metrics:
            if metrics:
                raise ConfigError(f"best_metric {self.metric!r} is not among the validation "
                                  f"metrics", hint="one of " + ", ".join(sorted(metrics)))
            return math.nan
        return float(metrics[self.metric])

    def improves(self, value: float, best: float | None) -> bool:
        """True when ``value`` is finite and better than ``best`` (always, when no best yet)."""
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best


class Validator:
    """Predict the validation images with a model and evaluate them under one protocol.

    Args:
        data: the validation :class:`Dataset`.
        protocol: one of :data:`PROTOCOLS` (``auto``: :func:`protocol_for` the data).
        predictor_options: passed to :class:`~danlu.infer.predictor.Predictor` (``img_size``,
            ``resize``, ``score_threshold``, ``class_names``, ``batch_size`` ...).
    """

    def __init__(self, data: Dataset, protocol: str = "auto", **predictor_options: Any) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown val_protocol {protocol!r}",
                              hint="one of " + ", ".join(PROTOCOLS))
        self.data = data
        self.protocol = protocol_for(data) if protocol == "auto" else protocol
        self.predictor_options = predictor_options

    def __call__(self, model: Any, device: Any) -> Any:
        """The :class:`~danlu.evaluate.result.EvalResult` of ``model`` on the data."""
        from danlu.evaluate.api import evaluate
        from danlu.infer.predictor import Predictor

        # every class above the threshold, as mAP wants (and ``danlu eval MODEL`` does)
        options = {"multi_label": True, **self.predictor_options}
        predictor = Predictor(model, device=device, **options)
        return evaluate(self.data, predictor.predict_dataset(self.data), protocol=self.protocol)


__all__ = ["Validator", "BestRule", "protocol_for", "headline_metric", "PROTOCOLS"]
