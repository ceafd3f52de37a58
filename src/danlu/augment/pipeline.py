"""The training augmentation pipeline: mosaic -> one geometric warp -> colour jitter.

:class:`DetectionAugment` composes the steps of this room in a fixed order:

1. mosaic (probability ``mosaic``), see :func:`danlu.augment.mosaic.mosaic`;
2. one warp per batch whose matrix per image holds the random resized crop (or the resize to
   ``size``), the flips, scale, rotation and translation; with flips alone the images are flipped
   exactly (no resampling);
3. colour jitter, fused into one colour matrix per image.

Images are float ``[B, 3, H, W]`` in ``[0, 1]`` on any device (the training device: nothing moves
to the CPU except the random draws and the box counts; uint8 ``[0, 255]`` batches are accepted and
converted chunk by chunk, which is cheaper than converting first); targets are one
torchvision-style dict per image, ``"boxes"`` ``[Ni, 4]`` float ``xyxy`` absolute pixels,
``"labels"`` ``[Ni]`` int64, and any other per-box tensor (flags, ``"polygons"`` ``[Ni, 4, 2]``)
which follows its box.
The output has the same form, ready for a torchvision detector. Randomness comes only from the
``generator`` argument (a CPU :class:`torch.Generator`). Differentiable with respect to the
images.

Example:
    >>> import torch
    >>> aug = DetectionAugment(hflip=0.5, degrees=10, scale=(0.8, 1.2), translate=0.1,
    ...                        brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02)
    >>> g = torch.Generator().manual_seed(0)
    >>> images = torch.rand(2, 3, 64, 64)
    >>> targets = [{"boxes": torch.tensor([[10., 10., 40., 50.]]), "labels": torch.tensor([3])},
    ...            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    >>> out, tg = aug(images, targets, generator=g)
    >>> out.shape, [len(t["boxes"]) for t in tg]
    (torch.Size([2, 3, 64, 64]), [1, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from danlu.augment.color import adjust_color, random_color_factors
from danlu.augment.geometric import (
    Target,
    affine_matrices,
    crop_matrices,
    move_targets,
    random_affine_matrices,
    random_crop_boxes,
    warp_images,
)
from danlu.augment.mosaic import mosaic as _mosaic

#: Images per chunk of pixel work on the CPU (see ``DetectionAugment(chunk=...)``).
CPU_CHUNK = 4

#: Named settings for :meth:`DetectionAugment.preset`.
PRESETS: dict[str, dict[str, Any]] = {
    "none": {"hflip": 0.0},
    "flip": {"hflip": 0.5},
    "light": {"hflip": 0.5, "scale": (0.8, 1.2), "translate": 0.1, "brightness": 0.2,
              "contrast": 0.2, "saturation": 0.2, "hue": 0.015},
    "default": {"hflip": 0.5, "degrees": 5.0, "scale": (0.6, 1.4), "translate": 0.1,
                "brightness": 0.3, "contrast": 0.3, "saturation": 0.5, "hue": 0.015,
                "mosaic": 0.5},
}


class DetectionAugment(torch.nn.Module):
    """Batched, box-aware, differentiable augmentation for detection training.

    Args:
        size: output ``(H, W)``; the input size when None.
        hflip, vflip: probabilities of a horizontal / vertical flip per image.
        degrees: rotation angle range ``U(-degrees, degrees)`` (or ``(lo, hi)``).
        scale: zoom range ``(lo, hi)`` about the image centre, or one fixed factor.
        translate: shift range as a fraction of the image size.
        crop_scale: area-fraction range of a random resized crop; None for no crop.
        crop_ratio: aspect-ratio range (w/h) of the crop.
        brightness, contrast, saturation, hue: colour jitter strengths (torchvision meaning).
        color_p: probability that an image gets colour jitter.
        mosaic: probability that an image becomes a 4-image mosaic.
        mosaic_center: range of the mosaic centre as a fraction of the size.
        min_visibility: drop a box when less than this fraction of its area stays in the image.
        min_size: drop a box when a clipped side is shorter than this (pixels).
        fill: value (or one per channel) of pixels that come from outside the input.
        chunk: images resampled and coloured together; None: :data:`CPU_CHUNK` (or the number
            of torch threads, if larger) on the CPU, where a small working set stays in cache
            (measured 1.3-2x faster than whole batches at 256 px), and the whole batch on
            other devices. Results do not depend on it.
    """

    def __init__(
        self,
        *,
        size: tuple[int, int] | None = None,
        hflip: float = 0.5,
        vflip: float = 0.0,
        degrees: float | Sequence[float] = 0.0,
        scale: float | Sequence[float] = 1.0,
        translate: float = 0.0,
        crop_scale: Sequence[float] | None = None,
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        color_p: float = 1.0,
        mosaic: float = 0.0,
        mosaic_center: Sequence[float] = (0.25, 0.75),
        min_visibility: float = 0.25,
        min_size: float = 2.0,
        fill: float | Sequence[float] = 0.0,
        chunk: int | None = None,
    ) -> None:
        super().__init__()
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.hflip, self.vflip = float(hflip), float(vflip)
        self.degrees = degrees if isinstance(degrees, (int, float)) else tuple(degrees)
        self.scale = scale if isinstance(scale, (int, float)) else tuple(scale)
        self.translate = float(translate)
        self.crop_scale = None if crop_scale is None else tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.saturation, self.hue = float(saturation), float(hue)
        self.color_p = float(color_p)
        self.mosaic = float(mosaic)
        self.mosaic_center = tuple(mosaic_center)
        self.min_visibility, self.min_size = float(min_visibility), float(min_size)
        self.fill = fill if isinstance(fill, (int, float)) else tuple(fill)
        self.chunk = None if chunk is None else int(chunk)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DetectionAugment:
        """One of :data:`PRESETS` (``none``, ``flip``, ``light``, ``default``), with overrides."""
        if name not in PRESETS:
            from danlu.errors import ConfigError

            raise ConfigError(f"unknown augmentation preset {name!r}",
                              hint="choose one of: " + ", ".join(PRESETS))
        return cls(**{**PRESETS[name], **overrides})

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (``DetectionAugment(**aug.config)`` rebuilds it)."""
        keys = ("size", "hflip", "vflip", "degrees", "scale", "translate", "crop_scale",
                "crop_ratio", "brightness", "contrast", "saturation", "hue", "color_p", "mosaic",
                "mosaic_center", "min_visibility", "min_size", "fill", "chunk")
        return {k: getattr(self, k) for k in keys}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    # -- steps ------------------------------------------------------------------------------------
    def _has_affine(self) -> bool:
        deg = self.degrees
        rot = (deg != 0) if isinstance(deg, (int, float)) else (deg[0] != 0 or deg[1] != 0)
        sc = (self.scale != 1) if isinstance(self.scale, (int, float)) else tuple(self.scale) != (
            1, 1)
        return rot or sc or self.translate > 0

    def _geometry(self, b: int, h: int, w: int, generator: torch.Generator | None
                  ) -> tuple[str, torch.Tensor | None, torch.Tensor | None, tuple[int, int]]:
        """Draw the geometric step: ``(kind, matrices, flips, out_size)``, kind one of
        ``"none"``, ``"flip"`` (exact flips, ``flips [B, 2]`` bool) or ``"warp"``."""
        out_size = self.size or (h, w)
        resize = out_size != (h, w)
        if not (self._has_affine() or self.crop_scale is not None or resize):
            if self.hflip <= 0 and self.vflip <= 0:
                return "none", None, None, out_size
            hf = torch.rand(b, generator=generator) < self.hflip
            vf = torch.rand(b, generator=generator) < self.vflip
            m = affine_matrices((h, w), hflip=hf, vflip=vf)
            return "flip", m, torch.stack([hf, vf], 1), out_size
        m = random_affine_matrices(b, out_size, hflip=self.hflip, vflip=self.vflip,
                                   degrees=self.degrees, scale=self.scale,
                                   translate=self.translate, generator=generator)
        if self.crop_scale is not None:
            crops = random_crop_boxes(b, (h, w), scale=self.crop_scale, ratio=self.crop_ratio,
                                      generator=generator)
            m = m @ crop_matrices(crops, out_size)
        elif resize:
            full = torch.tensor([[0.0, 0.0, float(w), float(h)]]).expand(b, 4)
            m = m @ crop_matrices(full, out_size)
        return "warp", m, None, out_size

    def _pixels(self, x: torch.Tensor, kind: str, m: torch.Tensor | None,
                flips: torch.Tensor | None, out_size: tuple[int, int],
                color: dict[str, torch.Tensor | None],
                out: torch.Tensor | None = None) -> torch.Tensor:
        """Geometry then colour for one chunk of images (kept small so it stays in cache);
        written into ``out`` when given (no autograd then)."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        if kind == "flip":
            b, dev = len(x), x.device
            hf, vf = flips[:, 0], flips[:, 1]
            if bool(hf.any()):
                x = torch.where(hf.to(dev).view(b, 1, 1, 1), x.flip(-1), x)
            if bool(vf.any()):
                x = torch.where(vf.to(dev).view(b, 1, 1, 1), x.flip(-2), x)
        elif kind == "warp":
            x = warp_images(x, m, out_size, fill=self.fill)
        if any(v is not None for v in color.values()):
            return adjust_color(x, **color, out=out)
        if out is not None:
            out.copy_(x)
            return out
        return x

    def forward(
        self,
        images: torch.Tensor,
        targets: Sequence[Target],
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, list[Target]]:
        """Augment a batch.

        Args:
            images: float ``[B, 3, H, W]`` in ``[0, 1]`` on any device (uint8 in ``[0, 255]`` is
                accepted too and converted, chunk by chunk).
            targets: B dicts with ``"boxes"`` ``[Ni, 4]`` (xyxy, absolute pixels) and
                ``"labels"`` ``[Ni]``, plus optional per-box tensors.
            generator: CPU generator for all random draws (None: torch's default).

        Returns:
            ``(images [B, 3, H', W'] float, targets)``: new dicts; boxes clipped to the image,
            boxes that left it dropped together with their labels and per-box values.
        """
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        targets = list(targets)
        if self.mosaic > 0:
            if images.dtype == torch.uint8:
                images = images.float().div_(255.0)
            images, targets = _mosaic(images, targets, p=self.mosaic, center=self.mosaic_center,
                                      min_visibility=self.min_visibility,
                                      min_size=self.min_size, fill=self.fill,
                                      generator=generator)
        b, _, h, w = images.shape
        kind, m, flips, out_size = self._geometry(b, h, w, generator)
        if m is not None:
            targets = move_targets(targets, m, out_size, min_visibility=self.min_visibility,
                                   min_size=self.min_size)
        color = random_color_factors(b, brightness=self.brightness, contrast=self.contrast,
                                     saturation=self.saturation, hue=self.hue, p=self.color_p,
                                     generator=generator)
        chunk = self.chunk or (max(CPU_CHUNK, torch.get_num_threads())
                               if images.device.type == "cpu" else b)
        dtype = torch.float32 if images.dtype == torch.uint8 else images.dtype
        # without autograd, each chunk is written straight into the output (no final copy)
        direct = b > chunk and not (torch.is_grad_enabled() and images.requires_grad)
        out = torch.empty(b, 3, *out_size, dtype=dtype, device=images.device) if direct else None
        parts = []
        for i in range(0, b, chunk):
            sl = slice(i, i + chunk)
            parts.append(self._pixels(
                images[sl], kind, None if m is None else m[sl],
                None if flips is None else flips[sl], out_size,
                {k: None if v is None else v[sl] for k, v in color.items()},
                None if out is None else out[sl]))
        if out is None:
            out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if out.dtype == torch.uint8:  # nothing changed the pixels
            out = out.float().div_(255.0)
        return out, targets


__all__ = ["DetectionAugment", "PRESETS", "CPU_CHUNK"]
