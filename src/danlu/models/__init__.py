"""Detectors on torchvision (FCOS, RetinaNet, Faster R-CNN, SSDLite) with our backbones.

Labels are 0-based dataset indices on both sides of every model (see
:class:`~danlu.models.builder.Detector`); boxes are ``xyxy`` absolute pixels of the input images.

Example:
    >>> import torch
    >>> from danlu.models import build_model
    >>> model = build_model("fcos-tiny", num_classes=2, img_size=64)
    >>> losses = model([torch.rand(3, 64, 64)],
    ...                [{"boxes": torch.tensor([[8., 8., 40., 40.]]), "labels": torch.tensor([1])}])
    >>> sorted(losses)
    ['bbox_ctrness', 'bbox_regression', 'classification']
"""

from danlu.models.anchors import anchor_sizes_from_boxes, expand_anchor_sizes
from danlu.models.backbones import (
    TinyBackbone,
    mobilenet_backbone_fpn,
    resnet_backbone,
    tiny_fpn_backbone,
)
from danlu.models.builder import (
    MODELS,
    Detector,
    anchor_levels,
    anchor_sizes_for,
    available_models,
    build_model,
    load_weights,
    model_config,
    model_label_offset,
    uses_anchors,
)

__all__ = [
    "build_model", "Detector", "MODELS", "available_models", "model_label_offset",
    "model_config", "load_weights", "anchor_levels", "uses_anchors", "anchor_sizes_for",
    "anchor_sizes_from_boxes", "expand_anchor_sizes", "TinyBackbone", "tiny_fpn_backbone",
    "resnet_backbone", "mobilenet_backbone_fpn",
]
