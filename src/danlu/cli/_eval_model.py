"""``danlu eval MODEL --gt DATA``: predict the ground truth's images with a model, in one step.

The model is run as training validation runs it (every class kept per box, score threshold
0.05 unless ``--score-threshold`` says otherwise), so the AP printed for ``best.pt`` is the
AP training reported for it (with the default threshold). Predicted classes are matched to
the ground truth's by name: a model trained with another class order is scored right, and
classes the ground truth does not have are dropped with a warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample


def class_mapping(model_names: list[str], gt_names: list[str]) -> tuple[np.ndarray, list[str]]:
    """The ground-truth index of each model class (-1: not in the ground truth) and the
    model classes that have no ground-truth namesake.

    Raises:
        ConfigError: when no model class is named as a ground-truth class.
    """
    gt_index = {n: i for i, n in enumerate(gt_names)}
    mapping = np.array([gt_index.get(n, -1) for n in model_names], np.int64)
    if len(model_names) and (mapping < 0).all():
        raise ConfigError(
            f"the model's classes ({', '.join(model_names[:6])}) share no name with the "
            f"ground truth's ({', '.join(gt_names[:6])})",
            hint="evaluate the model on data labelled with its own classes")
    return mapping, [n for n, m in zip(model_names, mapping, strict=True) if m < 0]


def _relabel(det: Detections, mapping: np.ndarray) -> Detections:
    if not len(det):
        return det
    mapped = mapping[det.labels]
    kept = det[mapped >= 0]
    kept.labels = mapped[mapped >= 0]
    return kept


def predict_ground_truth(model: str, gt: Dataset, *, device: str, batch: int,
                         score_threshold: float | None, progress: Any = None
                         ) -> tuple[Dataset, list[str]]:
    """Predictions of ``model`` for every image of ``gt``, labelled with ``gt``'s classes,
    and the model classes the ground truth lacks (their predictions are dropped)."""
    from danlu.infer.predictor import Predictor

    options: dict[str, Any] = {"device": device, "batch_size": batch, "multi_label": True}
    if score_threshold is not None:
        options["score_threshold"] = score_threshold
    predictor = Predictor(model, **options)
    mapping, foreign = class_mapping(list(predictor.class_names), list(gt.class_names))
    dets = predictor.predict_dataset(gt, progress=progress)
    samples = [Sample(s.image, s.width, s.height, _relabel(d, mapping), id=s.id,
                      meta=dict(s.meta)) for s, d in zip(gt.samples, dets, strict=True)]
    return Dataset(samples, gt.class_names, {"model": str(model)}), foreign
