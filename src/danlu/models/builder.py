"""Build torchvision detectors by name, with labels that are always dataset indices.

:func:`build_model` returns a :class:`Detector`: a thin ``nn.Module`` around a torchvision
detection model (``.model``) that takes and returns **0-based dataset labels** whatever the
family's convention. torchvision's Faster R-CNN and SSD reserve class 0 for the background (so
they are built with ``num_classes + 1`` outputs and the wrapper adds 1 to the target labels and
subtracts 1 from the predicted ones); FCOS and RetinaNet have no background class (offset 0).
:func:`model_label_offset` tells the offset of a name, for code that calls ``.model`` directly.

The call convention is torchvision's:

* train mode: ``model(images, targets) -> dict[str, Tensor]`` of losses, where ``images`` is a
  list of float ``[3, H, W]`` tensors in ``[0, 1]`` and ``targets`` a list of dicts with
  ``"boxes"`` ``[N, 4]`` float32 ``xyxy`` absolute pixels and ``"labels"`` ``[N]`` int64;
* eval mode: ``model(images) -> list[dict]`` with ``"boxes"``, ``"labels"`` and ``"scores"``,
  boxes in the input images' pixels.

Images are resized by the model's transform so that the longer side is ``img_size``
(``min_size = max_size = img_size``; SSD: exactly ``img_size x img_size``) and normalized
with ImageNet statistics; predictions come back in input coordinates.

``model.config`` (also :func:`model_config`) is a plain, YAML/JSON-friendly dict:
``build_model(**config)`` rebuilds the same architecture, so a checkpoint needs only it and the
state dict.

Example:
    >>> import torch
    >>> model = build_model("fcos-tiny", num_classes=3, img_size=128)
    >>> model.eval()(  # doctest: +ELLIPSIS
    ...     [torch.rand(3, 128, 128)])[0].keys()
    dict_keys(['boxes', 'scores', 'labels'])
    >>> build_model(**model.config).config == model.config
    True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import detection as tvd
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSClassificationHead, FCOSHead
from torchvision.models.detection.retinanet import RetinaNetClassificationHead
from torchvision.models.detection.rpn import RPNHead

from danlu.errors import ConfigError, ModelError
from danlu.models.anchors import anchor_sizes_from_boxes, expand_anchor_sizes
from danlu.models.backbones import (
    TINY_FPN_CHANNELS,
    load_state_dict_file,
    mobilenet_backbone_fpn,
    resnet_backbone,
    tiny_fpn_backbone,
)
from danlu.targets import Target

#: name -> (family, backbone)
MODELS: dict[str, tuple[str, str]] = {
    "fcos-tiny": ("fcos", "tiny"),
    "fcos-resnet18": ("fcos", "resnet18"),
    "fcos-resnet34": ("fcos", "resnet34"),
    "fcos-resnet50": ("fcos", "resnet50"),
    "fcos-mobilenet_v3_large": ("fcos", "mobilenet_v3_large"),
    "retinanet-tiny": ("retinanet", "tiny"),
    "retinanet-resnet18": ("retinanet", "resnet18"),
    "retinanet-resnet34": ("retinanet", "resnet34"),
    "retinanet-resnet50": ("retinanet", "resnet50"),
    "fasterrcnn-tiny": ("fasterrcnn", "tiny"),
    "fasterrcnn-resnet50": ("fasterrcnn", "resnet50"),
    "fasterrcnn-mobilenet_v3_large": ("fasterrcnn", "mobilenet_v3_large"),
    "fasterrcnn-mobilenet_v3_large_320_fpn": ("fasterrcnn", "mobilenet_v3_large_320"),
    "ssdlite-mobilenet_v3_large": ("ssdlite", "mobilenet_v3_large"),
}

#: Families whose torchvision models count the background as class 0.
BACKGROUND_FAMILIES = frozenset({"fasterrcnn", "ssdlite"})

# name -> torchvision builder with COCO weights ("DEFAULT"), for weights="DEFAULT"
_COCO_BUILDERS = {
    "fcos-resnet50": "fcos_resnet50_fpn",
    "retinanet-resnet50": "retinanet_resnet50_fpn",
    "fasterrcnn-resnet50": "fasterrcnn_resnet50_fpn",
    "fasterrcnn-mobilenet_v3_large": "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn-mobilenet_v3_large_320_fpn": "fasterrcnn_mobilenet_v3_large_320_fpn",
    "ssdlite-mobilenet_v3_large": "ssdlite320_mobilenet_v3_large",
}

# defaults per family/backbone that keep the tiny models quick on a CPU (kwargs override them)
_TINY_RCNN_DEFAULTS = {
    "rpn_pre_nms_top_n_train": 1000, "rpn_post_nms_top_n_train": 500,
    "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300,
    "box_batch_size_per_image": 256,
}
_MOBILENET_320_DEFAULTS = {
    "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05,
}


def available_models() -> list[str]:
    """The names :func:`build_model` accepts."""
    return sorted(MODELS)


def _family(name: str) -> tuple[str, str]:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}",
                          hint="choose one of: " + ", ".join(available_models())) from None


def model_label_offset(name: str) -> int:
    """How much the torchvision model's labels exceed dataset labels: 1 for families with a
    background class (Faster R-CNN, SSD), 0 for FCOS and RetinaNet.

    :class:`Detector` applies it both ways; only code that calls ``detector.model`` needs it.
    """
    return 1 if _family(name)[0] in BACKGROUND_FAMILIES else 0


def anchor_levels(name: str) -> int:
    """Number of pyramid levels that carry anchors in model ``name`` (0 for SSD, whose default
    boxes are relative to the image)."""
    family, backbone = _family(name)
    if family == "ssdlite":
        return 0
    if backbone == "tiny":
        return 4 if family == "fasterrcnn" else 5
    if backbone.startswith("mobilenet"):
        return 3 if family == "fasterrcnn" else 5
    return 5


def uses_anchors(name: str) -> bool:
    """True for the anchor-based families (RetinaNet, Faster R-CNN) whose anchor sizes should
    follow the data (see :func:`anchor_sizes_for`)."""
    return _family(name)[0] in ("retinanet", "fasterrcnn")


def anchor_sizes_for(name: str, wh: Any, **kwargs: Any) -> tuple[float, ...] | None:
    """Anchor sizes for model ``name`` derived from box sizes ``wh [N, 2]`` (pixels at the model's
    input size) with :func:`~danlu.models.anchors.anchor_sizes_from_boxes`; None for FCOS and SSD
    (their defaults follow the strides). Pass the result as ``build_model(anchor_sizes=...)``."""
    if not uses_anchors(name):
        return None
    return anchor_sizes_from_boxes(wh, anchor_levels(name), **kwargs)


class Detector(nn.Module):
    """A torchvision detector that takes and returns 0-based dataset labels.

    Args:
        model: the torchvision detection model (kept as ``.model``).
        config: the :func:`build_model` arguments that rebuild it.
        label_offset: added to target labels on the way in, subtracted from predicted labels on
            the way out (see :func:`model_label_offset`).
    """

    def __init__(self, model: nn.Module, config: Mapping[str, Any], label_offset: int) -> None:
        super().__init__()
        self.model = model
        self.config = dict(config)
        self.label_offset = int(label_offset)

    @property
    def name(self) -> str:
        return self.config["name"]

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    def forward(self, images: Sequence[torch.Tensor] | torch.Tensor,
                targets: Sequence[Target] | None = None) -> Any:
        """Train mode: a dict of losses; eval mode: one dict of boxes/labels/scores per image.

        Args:
            images: float ``[3, H, W]`` tensors in ``[0, 1]`` (a list, or a ``[B, 3, H, W]``
                batch).
            targets: (train mode) dicts with ``"boxes"`` ``[N, 4]`` xyxy pixels and
                ``"labels"`` ``[N]`` int64 dataset indices.
        """
        if isinstance(images, torch.Tensor):
            images = list(images.unbind(0)) if images.dim() == 4 else [images]
        off = self.label_offset
        if targets is not None and off:
            targets = [{**t, "labels": t["labels"] + off} for t in targets]
        out = self.model(list(images), None if targets is None else list(targets))
        if off and isinstance(out, list):
            out = [{**d, "labels": d["labels"] - off} for d in out]
        return out


def model_config(model: Detector) -> dict[str, Any]:
    """The checkpoint-friendly config of a built model: ``build_model(**model_config(m))``
    rebuilds the same architecture (weights not included)."""
    return dict(model.config)


def _anchor_generator(sizes: tuple[tuple[float, ...], ...], family: str) -> AnchorGenerator:
    ratios = (1.0,) if family == "fcos" else (0.5, 1.0, 2.0)  # FCOS: one point per location
    return AnchorGenerator(sizes, (ratios,) * len(sizes))


def _resolve_anchors(anchor_sizes: Sequence[Any] | None, family: str,
                     default: tuple[tuple[float, ...], ...]) -> tuple[tuple[float, ...], ...]:
    if anchor_sizes is None:
        return default
    sizes = expand_anchor_sizes(anchor_sizes, family)
    if len(sizes) != len(default):
        raise ConfigError(f"anchor_sizes has {len(sizes)} levels, the model has {len(default)}")
    return sizes


def _backbone(family: str, backbone: str, backbone_weights: str | None, trainable: int | None,
              frozen_bn: bool) -> tuple[nn.Module, tuple[int, ...]]:
    extra = "pool" if family == "fasterrcnn" else "p6p7"
    if backbone == "tiny":
        return tiny_fpn_backbone(extra=extra, weights=backbone_weights)
    if backbone.startswith("resnet"):
        return resnet_backbone(backbone, extra=extra, weights=backbone_weights,
                               trainable_layers=trainable, frozen_bn=frozen_bn)
    return mobilenet_backbone_fpn(extra=extra, weights=backbone_weights,
                                  trainable_layers=trainable, frozen_bn=frozen_bn)


def _default_anchors(family: str, backbone: str,
                     strides: tuple[int, ...]) -> tuple[tuple[float, ...], ...]:
    if family == "fcos":  # torchvision: the stride (regression range 4x..8x the size)
        return tuple((float(s),) for s in strides)
    if family == "retinanet":  # torchvision: 4x the stride, three octave scales
        return expand_anchor_sizes([4.0 * s for s in strides], "retinanet")
    if backbone.startswith("mobilenet"):  # torchvision's mobilenet Faster R-CNN
        return ((32.0, 64.0, 128.0, 256.0, 512.0),) * len(strides)
    if backbone == "tiny":
        return tuple((4.0 * s,) for s in strides)
    return tuple((8.0 * s,) for s in strides)  # torchvision: 32 ... 512 at strides 4 ... 64


def _build_scratch(family: str, backbone: str, num_classes: int, img_size: int,
                   anchor_sizes: Any, backbone_weights: str | None,
                   kwargs: dict[str, Any]) -> tuple[nn.Module, Any]:
    size_kw = {"min_size": img_size, "max_size": img_size}
    trainable = kwargs.pop("trainable_backbone_layers", None)
    frozen_bn = bool(kwargs.pop("frozen_bn", False))
    if family == "ssdlite":
        if backbone_weights not in (None, "DEFAULT"):
            raise ModelError("ssdlite takes backbone_weights=None or 'DEFAULT' only",
                             hint="load a full detector state dict with weights=PATH instead")
        model = tvd.ssdlite320_mobilenet_v3_large(
            weights=None, weights_backbone=backbone_weights, num_classes=num_classes + 1,
            trainable_backbone_layers=trainable, **kwargs)
        _set_size(model, img_size)
        return model, None
    body, strides = _backbone(family, backbone, backbone_weights, trainable, frozen_bn)
    sizes = _resolve_anchors(anchor_sizes, family, _default_anchors(family, backbone, strides))
    anchors = _anchor_generator(sizes, family)
    if family == "fcos":
        head = FCOSHead(body.out_channels, 1, num_classes,
                        num_convs=int(kwargs.pop("head_convs", 4)))
        model = tvd.FCOS(body, num_classes, anchor_generator=anchors, head=head, **size_kw,
                         **kwargs)
    elif family == "retinanet":
        model = tvd.RetinaNet(body, num_classes, anchor_generator=anchors, **size_kw, **kwargs)
    else:
        extra: dict[str, Any] = {}
        if backbone == "tiny":
            rep = 256
            extra = {"box_head": TwoMLPHead(TINY_FPN_CHANNELS * 7 * 7, rep),
                     "box_predictor": FastRCNNPredictor(rep, num_classes + 1),
                     **_TINY_RCNN_DEFAULTS}
        elif backbone == "mobilenet_v3_large_320":
            extra = dict(_MOBILENET_320_DEFAULTS)
        head = RPNHead(body.out_channels, anchors.num_anchors_per_location()[0])
        opts = {**extra, **kwargs}
        model = tvd.FasterRCNN(body, None if "box_predictor" in opts else num_classes + 1,
                               rpn_anchor_generator=anchors, rpn_head=head, **size_kw, **opts)
    return model, sizes


def _set_size(model: nn.Module, img_size: int) -> None:
    t = model.transform
    t.min_size = (img_size,)
    t.max_size = img_size
    if getattr(t, "fixed_size", None) is not None:
        t.fixed_size = (img_size, img_size)


def _build_coco(name: str, family: str, num_classes: int, img_size: int, anchor_sizes: Any,
                kwargs: dict[str, Any]) -> tuple[nn.Module, Any]:
    """torchvision's COCO-trained model with a new classification head (needs the internet)."""
    if name not in _COCO_BUILDERS:
        raise ModelError(f"torchvision has no COCO weights for {name!r}",
                         hint="COCO weights exist for: " + ", ".join(sorted(_COCO_BUILDERS)))
    kwargs.pop("frozen_bn", None)
    kwargs.pop("head_convs", None)  # checked to be torchvision's 4
    builder = getattr(tvd, _COCO_BUILDERS[name])
    try:
        model = builder(weights="DEFAULT", **kwargs)
    except Exception as e:  # network or cache failures come in many types
        raise ModelError(f"cannot load torchvision's COCO weights for {name!r} ({e})",
                         hint="weights='DEFAULT' needs the internet or a filled torch hub cache; "
                              "or pass a local state dict path") from e
    _set_size(model, img_size)
    sizes = None
    if family != "ssdlite":
        gen = model.rpn.anchor_generator if family == "fasterrcnn" else model.anchor_generator
        sizes = tuple(tuple(float(x) for x in level) for level in gen.sizes)
        if anchor_sizes is not None:
            new = _resolve_anchors(anchor_sizes, family, sizes)
            if [len(a) for a in new] != [len(a) for a in sizes]:
                raise ConfigError("with COCO weights, anchor_sizes must keep the number of sizes "
                                  f"per level ({[len(a) for a in sizes]})")
            new_gen = _anchor_generator(new, family)
            if family == "fasterrcnn":
                model.rpn.anchor_generator = new_gen
            else:
                model.anchor_generator = new_gen
            sizes = new
    if family == "fasterrcnn":
        box = model.roi_heads.box_predictor
        model.roi_heads.box_predictor = FastRCNNPredictor(box.cls_score.in_features,
                                                          num_classes + 1)
    elif family == "retinanet":
        na = model.anchor_generator.num_anchors_per_location()[0]
        model.head.classification_head = RetinaNetClassificationHead(
            model.backbone.out_channels, na, num_classes)
    elif family == "fcos":
        model.head.classification_head = FCOSClassificationHead(
            model.backbone.out_channels, 1, num_classes)
    else:
        from functools import partial

        from torchvision.models.detection import _utils as det_utils
        from torchvision.models.detection.ssdlite import SSDLiteClassificationHead

        channels = det_utils.retrieve_out_channels(model.backbone, (320, 320))
        model.head.classification_head = SSDLiteClassificationHead(
            channels, model.anchor_generator.num_anchors_per_location(), num_classes + 1,
            partial(nn.BatchNorm2d, eps=0.001, momentum=0.03))
    return model, sizes


def load_weights(model: Detector, weights: str | Path | Mapping[str, torch.Tensor]) -> Detector:
    """Load a state dict (a path, read with ``weights_only=True``, or a mapping) into ``model``.

    Accepts the state dict of a :class:`Detector` (keys ``model.*``) or of the bare torchvision
    model, or a checkpoint dict holding one under ``"model"`` / ``"state_dict"``.
    Raises :class:`~danlu.errors.ModelError` when the keys or shapes do not match.
    """
    state = load_state_dict_file(weights) if isinstance(weights, (str, Path)) else dict(weights)
    if state and not any(k.startswith("model.") for k in state):
        state = {f"model.{k}": v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ModelError(f"weights do not fit {model.name!r}: {str(e).splitlines()[0]} ...",
                         hint="build the model with the config saved beside the weights") from e
    return model


def build_model(
    name: str,
    num_classes: int,
    *,
    img_size: int = 256,
    weights: str | Path | None = None,
    backbone_weights: str | None = None,
    anchor_sizes: Sequence[Any] | None = None,
    **kwargs: Any,
) -> Detector:
    """Build a detector by name (see :func:`available_models`).

    Args:
        name: ``"<family>-<backbone>"``: families ``fcos``, ``retinanet``, ``fasterrcnn``,
            ``ssdlite``; backbones ``tiny`` (a small plain CNN with a 64-channel FPN, trains in
            minutes on a CPU), ``resnet18|34|50``, ``mobilenet_v3_large`` (and
            ``fasterrcnn-mobilenet_v3_large_320_fpn``, torchvision's low-resolution variant).
        num_classes: number of dataset classes (no background); labels are ``0 .. n-1`` on the
            way in and out, whatever the family's convention.
        img_size: the model resizes images so the longer side is ``img_size`` (SSD: square).
        weights: None (from scratch), ``"DEFAULT"`` (torchvision's COCO weights with a new
            classification head; needs the internet), or a path to a state dict of this
            architecture (``torch.load(weights_only=True)``; see :func:`load_weights`).
        backbone_weights: None, ``"DEFAULT"`` (ImageNet, internet) or a path to a classification
            state dict of the backbone. Pretrained backbones get frozen BatchNorm.
        anchor_sizes: for anchor-based families, flat (one size per level) or nested per-level
            sizes in pixels (see :mod:`danlu.models.anchors` and :func:`anchor_sizes_for`);
            for FCOS they set the levels' regression ranges. None: the family's default.
        **kwargs: passed to the torchvision model (``score_thresh``, ``nms_thresh``,
            ``detections_per_img``, ``box_score_thresh`` ...), plus
            ``head_convs`` (FCOS: convolutions in each head tower; 2 for ``fcos-tiny``, else
            torchvision's 4), ``trainable_backbone_layers`` and ``frozen_bn`` (ResNet/MobileNet
            backbones: torchvision's FrozenBatchNorm2d; default: whether pretrained weights are
            loaded; recorded in the config). Must be plain values (they go into the config).

    Returns:
        A :class:`Detector` in train mode on the CPU, with ``.config`` to rebuild it.

    Raises:
        ConfigError: unknown name, bad ``num_classes`` or anchor sizes.
        ModelError: weights that cannot be loaded.
    """
    family, backbone = _family(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive int, got {num_classes!r}")
    img_size = int(img_size)
    opts = dict(kwargs)
    if backbone != "tiny" and family != "ssdlite":
        # pretrained backbones use frozen BatchNorm; recorded so the config rebuilds it
        frozen = opts.get("frozen_bn")
        opts["frozen_bn"] = (weights == "DEFAULT" or backbone_weights is not None
                             if frozen is None else bool(frozen))
    else:
        opts.pop("frozen_bn", None)
    if family == "fcos":
        # the tiny model's towers are 2 convolutions deep, not 4: the stride-8 level's towers
        # were 40% of a CPU training step
        opts["head_convs"] = int(opts.get("head_convs",
                                                2 if backbone == "tiny" and weights != "DEFAULT"
                                                else 4))
        if opts["head_convs"] < 1 or (weights == "DEFAULT" and opts["head_convs"] != 4):
            raise ConfigError(f"head_convs={opts['head_convs']}: must be >= 1 (4 with "
                              "weights='DEFAULT', torchvision's COCO head)")
    elif "head_convs" in opts:
        raise ConfigError(f"head_convs is an FCOS option, not one of {family}")
    if weights == "DEFAULT":
        model, sizes = _build_coco(name, family, num_classes, img_size, anchor_sizes, dict(opts))
    else:
        model, sizes = _build_scratch(family, backbone, num_classes, img_size, anchor_sizes,
                                      backbone_weights, dict(opts))
    config: dict[str, Any] = {
        "name": name, "num_classes": num_classes, "img_size": img_size,
        "anchor_sizes": None if sizes is None else [list(level) for level in sizes],
        **opts,
    }
    det = Detector(model, config, model_label_offset(name))
    if family in ("fcos", "retinanet"):
        # channels-last convolutions: about 1.2x faster CPU training steps for the tiny model
        # (oneDNN), and what tensor cores prefer on CUDA
        det = det.to(memory_format=torch.channels_last)
    if weights is not None and weights != "DEFAULT":
        load_weights(det, weights)
    return det


__all__ = [
    "MODELS", "BACKGROUND_FAMILIES", "Detector", "build_model", "available_models",
    "model_label_offset", "model_config", "load_weights", "anchor_levels", "uses_anchors",
    "anchor_sizes_for",
]
