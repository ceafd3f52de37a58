"""Candidate boxes of the dense detectors (FCOS, RetinaNet) before any suppression.

torchvision's detectors end their forward pass with a post-processing step that keeps, per
feature level, the scores above ``score_thresh``, the ``topk_candidates`` best of them, decodes
their boxes and clips them to the image, and then runs class-aware NMS and keeps
``detections_per_img``. :func:`dense_candidates` does the first part only, so danlu's own
suppression (:mod:`danlu.infer.postprocess`) decides what survives; with the NMS switched off
by a threshold instead, torchvision would still run its quadratic loop over every candidate.

FCOS candidates also carry ``loc_scores``: the sigmoid of the centerness branch, the
localization confidence that IoU-guided NMS ranks by (the classification score torchvision
reports is ``sqrt(sigmoid(cls) * sigmoid(centerness))``).

Example:
    >>> import torch
    >>> from danlu.models import build_model
    >>> from danlu.models.candidates import candidates_mode
    >>> det = build_model("fcos-tiny", num_classes=2, img_size=64).eval()
    >>> with candidates_mode(det.model), torch.inference_mode():
    ...     out = det([torch.rand(3, 64, 64)])[0]
    >>> sorted(out)
    ['boxes', 'labels', 'loc_scores', 'scores']
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.ops import clip_boxes_to_image


def supports_candidates(model: nn.Module) -> bool:
    """True for the torchvision detectors :func:`dense_candidates` reads (FCOS, RetinaNet)."""
    return isinstance(model, (FCOS, RetinaNet))


def _best_of_level(scores: Tensor, threshold: float, k: int) -> tuple[Tensor, Tensor]:
    """Flat indices and values of the at most ``k`` scores above ``threshold``, best first."""
    index = torch.nonzero(scores > threshold).squeeze(1)
    values, order = scores[index].topk(min(k, index.numel()))
    return values, index[order]


def dense_candidates(model: FCOS | RetinaNet, head_outputs: dict[str, list[Tensor]],
                     anchors: list[list[Tensor]], image_shapes: list[tuple[int, int]]
                     ) -> list[dict[str, Tensor]]:
    """The ``postprocess_detections`` of FCOS / RetinaNet without NMS or the detection cap:
    per image, a dict of ``boxes`` (clipped xyxy), ``scores``, ``labels`` (the model's own
    label ids), and for FCOS ``loc_scores``; levels concatenated in order, best first within a
    level."""
    fcos = isinstance(model, FCOS)
    out = []
    for i, shape in enumerate(image_shapes):
        boxes, scores, labels, loc = [], [], [], []
        for level, level_anchors in enumerate(anchors[i]):
            logits = head_outputs["cls_logits"][level][i]
            num_classes = logits.shape[-1]
            prob = torch.sigmoid(logits)
            if fcos:
                ctr = torch.sigmoid(head_outputs["bbox_ctrness"][level][i])
                prob = torch.sqrt(prob * ctr)
            values, flat = _best_of_level(prob.flatten(), model.score_thresh,
                                          model.topk_candidates)
            anchor = torch.div(flat, num_classes, rounding_mode="floor")
            codes = head_outputs["bbox_regression"][level][i][anchor]
            if fcos:
                decoded = model.box_coder.decode(codes, level_anchors[anchor])
                loc.append(ctr[anchor, 0])
            else:
                decoded = model.box_coder.decode_single(codes, level_anchors[anchor])
            boxes.append(clip_boxes_to_image(decoded, shape))
            scores.append(values)
            labels.append(flat % num_classes)
        result = {"boxes": torch.cat(boxes), "scores": torch.cat(scores),
                  "labels": torch.cat(labels)}
        if fcos:
            result["loc_scores"] = torch.cat(loc)
        out.append(result)
    return out


@contextlib.contextmanager
def candidates_mode(model: FCOS | RetinaNet) -> Iterator[None]:
    """Within the block, ``model``'s eval-mode forward returns :func:`dense_candidates`."""

    def postprocess(self: Any, head_outputs: Any, anchors: Any, image_shapes: Any) -> Any:
        return dense_candidates(self, head_outputs, anchors, image_shapes)

    model.postprocess_detections = types.MethodType(postprocess, model)  # this instance only
    try:
        yield
    finally:
        del model.postprocess_detections


__all__ = ["dense_candidates", "candidates_mode", "supports_candidates"]
