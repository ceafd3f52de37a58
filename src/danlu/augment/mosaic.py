"""Mosaic: four images of the batch tiled into one, boxes included.

For each output a centre ``(cx, cy)`` is drawn uniformly in ``center`` times the image size; it
splits the canvas into four tiles. Tile ``q`` shows one source image, scaled (aspect kept) just
enough to cover the tile and anchored with its inner corner on the centre, so the tile has no
empty area; the part of the source beyond its tile is cut. The first tile (top-left) shows the
image itself, the other three are drawn from the batch at random.

Boxes of each source move with its tile's matrix, are clipped to the tile, and are dropped
(labels and per-box values too) when less than ``min_visibility`` of their area stays inside
it or a side is shorter than ``min_size`` pixels. Images are float ``[B, C, H, W]`` on any device;
targets are torchvision-style dicts with ``xyxy`` boxes in absolute pixels (see
:mod:`danlu.augment.geometric`). Differentiable with respect to the images.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.rand(4, 3, 64, 64)
    >>> t = [{"boxes": torch.tensor([[8., 8., 40., 40.]]), "labels": torch.tensor([i])}
    ...      for i in range(4)]
    >>> y, t2 = mosaic(x, t, generator=g)
    >>> y.shape, all(len(d["boxes"]) == len(d["labels"]) for d in t2)
    (torch.Size([4, 3, 64, 64]), True)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from danlu.augment.geometric import PER_IMAGE_KEYS, Target, move_targets, warp_images


def mosaic_layout(
    centers: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile matrices and regions for mosaic centres ``[K, 2]`` (pixels) on images ``(H, W)``.

    Returns:
        ``(matrices [4, K, 3, 3], regions [4, K, 4])``: for tiles top-left, top-right,
        bottom-left, bottom-right, the source -> canvas map (continuous pixel coordinates) and
        the tile rectangle (xyxy).
    """
    h, w = size
    cx, cy = centers[:, 0].float(), centers[:, 1].float()
    zero = torch.zeros_like(cx)
    fw, fh = torch.full_like(cx, float(w)), torch.full_like(cy, float(h))
    regions = torch.stack([
        torch.stack([zero, zero, cx, cy], 1), torch.stack([cx, zero, fw, cy], 1),
        torch.stack([zero, cy, cx, fh], 1), torch.stack([cx, cy, fw, fh], 1)])
    rw = regions[..., 2] - regions[..., 0]
    rh = regions[..., 3] - regions[..., 1]
    s = torch.maximum(rw / w, rh / h)  # [4, K]: cover the tile, aspect kept
    # the source corner that sits on the centre: (W, H), (0, H), (W, 0), (0, 0)
    ax = torch.tensor([w, 0.0, w, 0.0])[:, None]
    ay = torch.tensor([h, h, 0.0, 0.0])[:, None]
    m = torch.zeros(4, len(cx), 3, 3)
    m[..., 0, 0] = s
    m[..., 1, 1] = s
    m[..., 0, 2] = cx - s * ax
    m[..., 1, 2] = cy - s * ay
    m[..., 2, 2] = 1.0
    return m, regions


def _merge(parts: Sequence[Target]) -> Target:
    """Concatenate the per-box values of the four tiles' targets; other values from the first."""
    first = parts[0]
    n0 = len(first["boxes"])
    out: Target = {}
    for key, value in first.items():
        per_box = (isinstance(value, torch.Tensor) and key not in PER_IMAGE_KEYS
                   and value.dim() >= 1 and value.shape[0] == n0)
        if per_box and all(key in p for p in parts):
            out[key] = torch.cat([p[key] for p in parts])
        else:
            out[key] = value
    return out


def mosaic(
    images: torch.Tensor,
    targets: Sequence[Target],
    *,
    p: float = 1.0,
    center: Sequence[float] = (0.25, 0.75),
    min_visibility: float = 0.25,
    min_size: float = 2.0,
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[Target]]:
    """Replace each image, with probability ``p``, by a mosaic of it and three others.

    Args:
        images: float ``[B, C, H, W]`` on any device.
        targets: one dict per image with ``"boxes"`` ``[Ni, 4]`` xyxy pixels, ``"labels"`` ...
        p: probability that an output is a mosaic (the others pass unchanged).
        center: range of the mosaic centre as a fraction of the width and height.
        min_visibility, min_size: when a cut box is dropped (see the module docstring).
        fill: value where a tile would sample outside its source (only at rounding edges).
        generator: CPU generator for every random choice.

    Returns:
        ``(images [B, C, H, W], targets)``; new dicts, inputs unchanged.
    """
    b, _, h, w = images.shape
    chosen = torch.rand(b, generator=generator) < p
    idx = torch.nonzero(chosen).flatten()
    k = len(idx)
    if k == 0 or b == 0:
        return images, [dict(t) for t in targets]
    others = torch.randint(0, b, (3, k), generator=generator)
    sources = torch.cat([idx[None], others])  # [4, K]
    frac = torch.rand(k, 2, generator=generator) * (center[1] - center[0]) + center[0]
    centers = frac * torch.tensor([float(w), float(h)])
    mats, regions = mosaic_layout(centers, (h, w))

    src_flat = sources.flatten()  # tile-major: [4K]
    dev = images.device
    warped = warp_images(images[src_flat.to(dev)], mats.reshape(-1, 3, 3), (h, w),
                         fill=fill).view(4, k, *images.shape[1:])
    xs = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    c = centers.to(dev)
    left = (xs[None, :] < c[:, 0:1])[:, None, None, :]  # [K, 1, 1, W]
    top = (ys[None, :] < c[:, 1:2])[:, None, :, None]  # [K, 1, H, 1]
    tiles = torch.where(top, torch.where(left, warped[0], warped[1]),
                        torch.where(left, warped[2], warped[3]))

    moved = move_targets([targets[int(s)] for s in src_flat], mats.reshape(-1, 3, 3), (h, w),
                         min_visibility=min_visibility, min_size=min_size,
                         regions=regions.reshape(-1, 4))
    out_images = images.clone() if k < b else tiles
    if k < b:
        out_images[idx.to(dev)] = tiles
    out_targets = [dict(t) for t in targets]
    for j, i in enumerate(idx.tolist()):
        out_targets[i] = _merge([moved[q * k + j] for q in range(4)])
    return out_images, out_targets


__all__ = ["mosaic", "mosaic_layout"]
