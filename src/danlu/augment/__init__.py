"""Batched, box-aware, differentiable augmentation on the training device (built on Kornia).

Images are float ``[B, 3, H, W]`` in ``[0, 1]`` on any device; targets are one torchvision-style
dict per image with ``"boxes"`` ``[Ni, 4]`` float ``xyxy`` in absolute pixels, ``"labels"``
``[Ni]`` and optional per-box tensors that follow their boxes. Randomness comes from an explicit
CPU :class:`torch.Generator`. Every geometric step of a batch (crop, flips, scale, rotation,
translation) is one ``3x3`` matrix per image and one resampling (``grid_sample``, or Kornia's
``warp_affine`` with ``warp_images(..., backend="kornia")``); boxes move with the same matrices
in continuous pixel coordinates, so flips are exact (``x1' = W - x2``).

Example:
    >>> import torch
    >>> from danlu.augment import DetectionAugment
    >>> aug = DetectionAugment.preset("light")
    >>> x = torch.rand(2, 3, 32, 32)
    >>> t = [{"boxes": torch.tensor([[4., 4., 20., 20.]]), "labels": torch.tensor([0])}] * 2
    >>> y, t2 = aug(x, t, generator=torch.Generator().manual_seed(0))
    >>> y.shape
    torch.Size([2, 3, 32, 32])
"""

from danlu.augment.color import adjust_color, color_jitter, color_matrices, random_color_factors
from danlu.augment.geometric import (
    affine_matrices,
    apply_matrices,
    clip_and_filter,
    crop_matrices,
    hflip,
    move_targets,
    random_affine,
    random_affine_matrices,
    random_crop_boxes,
    random_resized_crop,
    transform_boxes,
    transform_points,
    vflip,
    warp_images,
)
from danlu.augment.mosaic import mosaic, mosaic_layout
from danlu.augment.pipeline import PRESETS, DetectionAugment

__all__ = [
    "DetectionAugment", "PRESETS",
    "hflip", "vflip", "random_affine", "random_resized_crop", "mosaic", "color_jitter",
    "adjust_color", "color_matrices", "random_color_factors",
    "affine_matrices", "random_affine_matrices", "crop_matrices", "random_crop_boxes",
    "mosaic_layout", "apply_matrices", "move_targets", "warp_images", "transform_boxes",
    "transform_points", "clip_and_filter",
]
