"""Feature-pyramid backbones for the detectors: a tiny plain CNN, ResNets and MobileNetV3.

Every builder returns a torchvision ``BackboneWithFPN`` (``out_channels`` set, a dict of feature
maps out) together with the stride of each pyramid level, in order. Images go in as float
``[B, 3, H, W]`` (normalized by the detector's transform).

Weights: ``weights=None`` trains from scratch (BatchNorm, every layer trainable);
``"DEFAULT"`` loads torchvision's ImageNet weights (needs the internet; BatchNorm frozen and the
first layers frozen, as torchvision does); a path loads a classification state dict saved by
``torch.save(model.state_dict())`` (``torch.load(weights_only=True)``).

Example:
    >>> import torch
    >>> fpn, strides = tiny_fpn_backbone(extra="p6p7")
    >>> feats = fpn(torch.rand(1, 3, 128, 128))
    >>> [tuple(f.shape[-2:]) for f in feats.values()], strides
    ([(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], (8, 16, 32, 64, 128))
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    mobilenet_backbone,
    resnet_fpn_backbone,
)
from torchvision.ops import misc as misc_nn_ops
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from danlu.errors import ModelError

#: Channels of the five stages of :class:`TinyBackbone`.
TINY_CHANNELS = (16, 32, 64, 128, 128)
#: Convolutions in each stage of :class:`TinyBackbone` (the first of each has stride 2).
TINY_DEPTHS = (1, 2, 2, 2, 2)
#: Channels of the tiny FPN.
TINY_FPN_CHANNELS = 64


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class TinyBackbone(nn.Sequential):
    """A small plain CNN: five stages (``stage1`` ... ``stage5``), each a stride-2 conv-BN-ReLU
    followed by ``depth - 1`` stride-1 conv-BN-ReLUs, so stage ``k`` has stride ``2**k``.

    Args:
        channels: output channels of the five stages.
        depths: convolutions per stage. The default has a single convolution in the first
            stage: a stride-1 convolution at half resolution cost about a tenth of a training
            step on a CPU for no measurable accuracy on the demo data.

    Sized to train a detector in minutes on 2 CPU cores (about 0.5 M parameters).
    """

    def __init__(self, channels: Sequence[int] = TINY_CHANNELS,
                 depths: Sequence[int] = TINY_DEPTHS) -> None:
        if len(depths) != len(channels) or min(depths) < 1:
            raise ModelError(f"depths {tuple(depths)} must give >= 1 convolution to each of "
                             f"the {len(channels)} stages")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        cin = 3
        for i, (c, d) in enumerate(zip(channels, depths, strict=True), start=1):
            convs = [_conv_bn_relu(cin, c, 2)] + [_conv_bn_relu(c, c, 1) for _ in range(d - 1)]
            layers[f"stage{i}"] = nn.Sequential(*convs)
            cin = c
        super().__init__(layers)
        self.channels = tuple(channels)
        self.depths = tuple(depths)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def _extra_block(extra: str, channels: int) -> ExtraFPNBlock:
    if extra == "p6p7":
        return LastLevelP6P7(channels, channels)
    if extra == "pool":
        return LastLevelMaxPool()
    raise ValueError(f"unknown extra FPN block {extra!r}: use 'p6p7' or 'pool'")


def _extra_strides(strides: tuple[int, ...], extra: str) -> tuple[int, ...]:
    last = strides[-1]
    return strides + ((last * 2, last * 4) if extra == "p6p7" else (last * 2,))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict saved with ``torch.save`` (safely: ``weights_only=True``).

    Accepts a plain state dict or a checkpoint dict holding one under ``"model"``,
    ``"state_dict"`` or ``"model_state"``. Raises :class:`~danlu.errors.ModelError`.
    """
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as e:  # OSError, RuntimeError, pickle.UnpicklingError, EOFError ...
        raise ModelError(f"{path}: cannot load weights ({e})") from e
    if isinstance(obj, dict) and obj and not all(isinstance(v, torch.Tensor)
                                                 for v in obj.values()):
        for key in ("model", "state_dict", "model_state"):
            if isinstance(obj.get(key), dict):
                return obj[key]
        raise ModelError(f"{path}: not a state dict (keys: {sorted(obj)[:5]} ...)")
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def tiny_fpn_backbone(
    *,
    extra: str = "p6p7",
    channels: Sequence[int] = TINY_CHANNELS,
    fpn_channels: int = TINY_FPN_CHANNELS,
    weights: str | None = None,
) -> tuple[BackboneWithFPN, tuple[int, ...]]:
    """:class:`TinyBackbone` with an FPN on stages 3-5 (strides 8, 16, 32).

    Args:
        extra: ``"p6p7"`` adds two stride-2 levels (FCOS, RetinaNet: strides 8 ... 128);
            ``"pool"`` adds one max-pooled level (Faster R-CNN: strides 8 ... 64).
        channels: channels of the five stages.
        fpn_channels: channels of every pyramid level.
        weights: None, or a path to a :class:`TinyBackbone` state dict.

    Returns:
        ``(backbone, strides)``.
    """
    body = TinyBackbone(channels)
    if weights is not None:
        if weights == "DEFAULT":
            raise ModelError("the tiny backbone has no pretrained weights",
                             hint="train it from scratch (backbone_weights=None) or give a path")
        body.load_state_dict(load_state_dict_file(weights))
    fpn = BackboneWithFPN(body, {"stage3": "0", "stage4": "1", "stage5": "2"},
                          list(channels[2:]), fpn_channels,
                          extra_blocks=_extra_block(extra, fpn_channels))
    return fpn, _extra_strides((8, 16, 32), extra)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _load_body(body: nn.Module, path: str | Path, prefix: str = "") -> None:
    """Load a classification state dict into a backbone body (classifier keys ignored)."""
    state = _strip(load_state_dict_file(path), prefix)
    own = body.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ModelError(f"{path}: backbone weights lack {len(missing)} keys, e.g. {missing[0]!r}")
    body.load_state_dict({k: state[k] for k in own})


def _pretrained(weights: str | None,
                frozen_bn: bool | None) -> tuple[str | None, type[nn.Module], bool]:
    """(torchvision weights name, norm layer, frozen) for ``weights`` and a ``frozen_bn``
    override (None: frozen exactly when weights are given)."""
    frozen = weights is not None if frozen_bn is None else bool(frozen_bn)
    tv = "DEFAULT" if weights == "DEFAULT" else None
    return tv, (misc_nn_ops.FrozenBatchNorm2d if frozen else nn.BatchNorm2d), frozen


def resnet_backbone(
    name: str,
    *,
    extra: str = "p6p7",
    weights: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
) -> tuple[BackboneWithFPN, tuple[int, ...]]:
    """ResNet-18/34/50 with a 256-channel FPN.

    ``extra="p6p7"`` (FCOS, RetinaNet) uses stages 3-5 plus P6-P7 (strides 8 ... 128);
    ``extra="pool"`` (Faster R-CNN) uses stages 2-5 plus a pooled level (strides 4 ... 64), as
    torchvision's detectors do. ``trainable_layers`` (0-5) defaults to 5 from scratch and 3 with
    pretrained weights. ``frozen_bn`` (default: whether weights are given) picks torchvision's
    FrozenBatchNorm2d, so a fine-tuned pretrained model can be rebuilt without its weights.
    """
    tv_weights, norm, pretrained = _pretrained(weights, frozen_bn)
    trainable = trainable_layers if trainable_layers is not None else (3 if pretrained else 5)
    returned = [2, 3, 4] if extra == "p6p7" else [1, 2, 3, 4]
    fpn = resnet_fpn_backbone(backbone_name=name, weights=tv_weights, norm_layer=norm,
                              trainable_layers=trainable, returned_layers=returned,
                              extra_blocks=_extra_block(extra, 256))
    if weights is not None and tv_weights is None:
        _load_body(fpn.body, weights)
    strides = (8, 16, 32) if extra == "p6p7" else (4, 8, 16, 32)
    return fpn, _extra_strides(strides, extra)


def mobilenet_backbone_fpn(
    *,
    extra: str = "pool",
    weights: str | None = None,
    trainable_layers: int | None = None,
    frozen_bn: bool | None = None,
) -> tuple[BackboneWithFPN, tuple[int, ...]]:
    """MobileNetV3-Large with a 256-channel FPN.

    ``extra="pool"`` is torchvision's Faster R-CNN layout (the last two stages, both stride 32,
    plus a pooled level: strides 32, 32, 64); ``extra="p6p7"`` taps strides 8, 16, 32 and adds
    P6-P7 (strides 8 ... 128) for FCOS. ``trainable_layers`` (0-6) defaults to 6 from scratch
    and 3 with pretrained weights; ``frozen_bn`` as in :func:`resnet_backbone`.
    """
    tv_weights, norm, pretrained = _pretrained(weights, frozen_bn)
    trainable = trainable_layers if trainable_layers is not None else (3 if pretrained else 6)
    returned = None if extra == "pool" else [2, 3, 5]
    fpn = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=tv_weights, fpn=True,
                             norm_layer=norm, trainable_layers=trainable,
                             returned_layers=returned, extra_blocks=_extra_block(extra, 256))
    if weights is not None and tv_weights is None:
        _load_body(fpn.body, weights, prefix="features.")
    strides = (32, 32) if extra == "pool" else (8, 16, 32)
    return fpn, _extra_strides(strides, extra)


__all__ = ["TinyBackbone", "TINY_CHANNELS", "TINY_DEPTHS", "TINY_FPN_CHANNELS",
           "tiny_fpn_backbone",
           "resnet_backbone", "mobilenet_backbone_fpn", "load_state_dict_file"]
