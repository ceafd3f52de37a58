"""Box-aware geometric augmentation: flips, affine (scale, rotation, translation), resized crop.

This module warps images and moves their targets; the matrices themselves (composing, random
draws, moving points and boxes) live in :mod:`danlu.augment.affine` and are re-exported here.

Conventions:

* images are float tensors ``[B, C, H, W]`` (values usually in ``[0, 1]``) on any device;
* targets are torchvision-style dicts, one per image: ``"boxes"`` ``[Ni, 4]`` float ``xyxy`` in
  absolute, continuous pixel coordinates (pixel ``i`` covers ``[i, i + 1)``), ``"labels"``
  ``[Ni]`` and any other per-box tensor (see :func:`split_targets`);
* matrices are ``[B, 3, 3]`` float32 affine maps from input to output pixel coordinates in the
  same continuous convention as the boxes. One matrix per image holds every geometric step
  (crop, flip, scale, rotation, translation) so the batch is resampled once.

Images are resampled once per batch by :func:`warp_images`: with ``grid_sample``
(``align_corners=False``, whose ``[-1, 1]`` spans the image edges, the continuous convention),
or with Kornia's :func:`kornia.geometry.transform.warp_affine` (``align_corners=True``: pixel-index
coordinates, so the matrix is conjugated by a half-pixel shift, continuous ``x`` = index + 0.5).
Boxes are moved by the continuous matrix directly, which keeps them exact (``hflip``:
``x1' = W - x2``). Kornia's box code is not used (see ``tests/test_augment.py`` for the cases
where it disagrees with the reference).

Example:
    >>> import torch
    >>> images = torch.rand(2, 3, 64, 64)
    >>> targets = [{"boxes": torch.tensor([[8., 8., 24., 32.]]), "labels": torch.tensor([1])},
    ...            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    >>> out, tg = hflip(images, targets)
    >>> tg[0]["boxes"].tolist()
    [[40.0, 8.0, 56.0, 32.0]]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

from danlu.augment.affine import (
    affine_matrices,
    crop_matrices,
    random_affine_matrices,
    random_crop_boxes,
    transform_boxes,
    transform_points,
    translation,
)
from danlu.boxes.convert import polygon_to_xyxy
from danlu.targets import Target

#: Keys of a target dict that describe the image, not its boxes: never filtered.
PER_IMAGE_KEYS = frozenset({"image_id", "orig_size", "size", "image_size", "id"})


# -- targets --------------------------------------------------------------------------------------
def split_targets(targets: Sequence[Target]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Concatenate the boxes of all images: ``(boxes [N, 4], image index [N], counts)``.

    A per-box key of a target is any tensor with at least one dimension whose first dimension
    equals the number of boxes, except :data:`PER_IMAGE_KEYS`; per-box values follow the boxes
    when boxes are dropped.
    """
    counts = [len(t["boxes"]) for t in targets]
    if not targets:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), counts
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).to(torch.float32)
    index = torch.repeat_interleave(torch.arange(len(targets), device=boxes.device),
                                    torch.tensor(counts, device=boxes.device))
    return boxes, index, counts


def _per_box(key: str, value: object, n: int) -> bool:
    return (isinstance(value, torch.Tensor) and key not in PER_IMAGE_KEYS and value.dim() >= 1
            and value.shape[0] == n)


def rebuild_targets(
    targets: Sequence[Target],
    boxes: torch.Tensor,
    keep: torch.Tensor | None,
    counts: Sequence[int],
    *,
    polygons: torch.Tensor | None = None,
    sources: Sequence[int] | None = None,
) -> list[Target]:
    """Split the moved ``boxes [N, 4]`` back into one dict per image, dropping ``~keep`` rows.

    ``sources[i]`` is the input target that output ``i`` comes from (identity when None); every
    per-box value is filtered like the boxes, other values are copied. ``polygons`` (``[N, 4, 2]``,
    moved) replace the targets' ``"polygons"`` when given.
    """
    sources = list(range(len(targets))) if sources is None else list(sources)
    keep_parts = (torch.split(keep, list(counts)) if keep is not None else [None] * len(counts))
    box_parts = torch.split(boxes, list(counts))
    poly_parts = torch.split(polygons, list(counts)) if polygons is not None else None
    out: list[Target] = []
    for i, src in enumerate(sources):
        t = targets[src]
        n = counts[i]
        k = keep_parts[i]
        new: Target = {}
        for key, value in t.items():
            if key == "boxes":
                b = box_parts[i].to(value.dtype)
                new[key] = b[k] if k is not None else b
            elif key == "polygons" and poly_parts is not None:
                p = poly_parts[i].to(value.dtype)
                new[key] = p[k] if k is not None else p
            elif _per_box(key, value, n) and k is not None:
                new[key] = value[k.to(value.device)]
            else:
                new[key] = value
        out.append(new)
    return out


def clip_and_filter(
    boxes: torch.Tensor,
    region: torch.Tensor | tuple[float, float, float, float],
    *,
    min_visibility: float = 0.25,
    min_size: float = 2.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clip boxes to ``region`` and say which to keep.

    Args:
        boxes: ``[N, 4]`` xyxy after the transform (may lie partly or fully outside).
        region: xyxy of the visible area: one tuple, or ``[N, 4]`` per box (mosaic tiles).
        min_visibility: keep a box when at least this fraction of its area is inside the region.
        min_size: ...and when its clipped width and height are both at least this many pixels.

    Returns:
        ``(clipped [N, 4], keep [N] bool)``. Degenerate boxes (zero area) are never kept.
    """
    r = torch.as_tensor(region, dtype=boxes.dtype, device=boxes.device)
    lo = r[..., :2].expand_as(boxes[:, :2])
    hi = r[..., 2:].expand_as(boxes[:, 2:])
    xy1 = torch.maximum(torch.minimum(boxes[:, :2], hi), lo)
    xy2 = torch.maximum(torch.minimum(boxes[:, 2:], hi), lo)
    clipped = torch.cat([xy1, xy2], dim=1)
    wh = xy2 - xy1
    full = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    area = wh.prod(dim=1)
    keep = (full > 0) & (area >= min_visibility * full) & (wh >= min_size).all(dim=1) & (area > 0)
    return clipped, keep


# -- warping --------------------------------------------------------------------------------------
def _to_index_coords(matrices: torch.Tensor) -> torch.Tensor:
    """Continuous-pixel matrices -> pixel-index matrices: ``T(-0.5) · M · T(+0.5)``."""
    m = matrices.clone()
    # M·T(0.5) adds 0.5·(m00 + m01) to the offset; T(-0.5) subtracts 0.5.
    m[:, :2, 2] = matrices[:, :2, 2] + 0.5 * (matrices[:, :2, 0] + matrices[:, :2, 1]) - 0.5
    return m


def sampling_grid(matrices: torch.Tensor, in_size: tuple[int, int],
                  out_size: tuple[int, int],
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The ``grid_sample`` grid ``[B, H', W', 2]`` (``align_corners=False``) of a warp.

    Output pixel centres ``(j + 0.5, i + 0.5)`` go through the inverse matrices to continuous
    input coordinates ``x``, normalized as ``2 x / W - 1``. Each grid coordinate is the sum of a
    per-row and a per-column term, so the full-size grid is written once. The small inverses
    are computed where ``matrices`` are (the CPU in the pipeline), the grid on ``device``.
    """
    h, w = in_size
    ho, wo = out_size
    dev = matrices.device if device is None else torch.device(device)
    inv = torch.linalg.inv(matrices.double()).float().to(dev)
    xs = torch.arange(wo, device=dev, dtype=torch.float32) + 0.5
    ys = torch.arange(ho, device=dev, dtype=torch.float32) + 0.5
    k = inv[:, :2] * torch.tensor([2.0 / w, 2.0 / h], device=dev)[None, :, None]  # [B, 2, 3]
    col = xs[None, :, None] * k[:, None, :, 0]  # [B, W', 2]
    row = ys[None, :, None] * k[:, None, :, 1] + (k[:, None, :, 2] - 1.0)  # [B, H', 2]
    return row[:, :, None, :] + col[:, None, :, :]  # one pass over the full grid


def warp_images(
    images: torch.Tensor,
    matrices: torch.Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    mode: str = "bilinear",
    fill: float | Sequence[float] = 0.0,
    backend: str = "torch",
) -> torch.Tensor:
    """Resample ``images [B, C, H, W]`` through ``[B, 3, 3]`` continuous-pixel matrices.

    Args:
        images: float images on any device; gradients flow to them.
        matrices: input -> output maps in continuous pixel coordinates (as for the boxes).
        out_size: ``(H, W)`` of the output; the input size when None.
        mode: ``"bilinear"`` or ``"nearest"``.
        fill: value (or one per channel) for output pixels that map outside the input.
        backend: ``"torch"`` builds the sampling grid here (:func:`sampling_grid`) and calls
            :func:`torch.nn.functional.grid_sample`; ``"kornia"`` calls Kornia's
            :func:`~kornia.geometry.transform.warp_affine` (``align_corners=True``, so the
            matrices are moved to pixel-index coordinates first). Both give the same images; on
            CPU Kornia 0.9 spends 3-5x longer building its grid (measured at 256 px, batch 16).

    Returns:
        ``[B, C, H', W']`` images, dtype and device of ``images``.
    """
    out_size = tuple(images.shape[-2:]) if out_size is None else tuple(out_size)
    m = matrices.to(torch.float32)
    fills = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(-1)
    plain = bool((fills == 0).all())
    if backend == "kornia":
        mi = _to_index_coords(m)[:, :2, :].to(images.device, images.dtype)
        if plain:
            return warp_affine(images, mi, out_size, mode=mode, padding_mode="zeros",
                               align_corners=True)
        return warp_affine(images, mi, out_size, mode=mode, padding_mode="fill",
                           align_corners=True,
                           fill_value=fills.expand(images.shape[1]).contiguous())
    if backend != "torch":
        raise ValueError(f"unknown warp backend {backend!r}: use 'torch' or 'kornia'")
    grid = sampling_grid(m, tuple(images.shape[-2:]), out_size, images.device).to(images.dtype)
    if plain:
        return F.grid_sample(images, grid, mode=mode, padding_mode="zeros", align_corners=False)
    # zeros padding of (x - fill), plus fill: outside pixels get `fill`, edges blend with it
    shift = fills.view(1, -1, 1, 1)
    out = F.grid_sample(images - shift, grid, mode=mode, padding_mode="zeros",
                        align_corners=False)
    return out + shift


def apply_matrices(
    images: torch.Tensor,
    targets: Sequence[Target],
    matrices: torch.Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    min_visibility: float = 0.25,
    min_size: float = 2.0,
    mode: str = "bilinear",
    fill: float | Sequence[float] = 0.0,
) -> tuple[torch.Tensor, list[Target]]:
    """Warp the images once and move their boxes (and ``"polygons"``) with the same matrices.

    Boxes become the enclosing box of their transformed corners, are clipped to the output, and
    are dropped (with their labels and other per-box values) when less than ``min_visibility``
    of their area remains or when a clipped side is shorter than ``min_size`` pixels.
    Polygons are transformed, not clipped.

    Returns:
        ``(images [B, C, H', W'], targets)`` with new target dicts (inputs are not modified).
    """
    out_size = tuple(images.shape[-2:]) if out_size is None else tuple(out_size)
    out = warp_images(images, matrices, out_size, mode=mode, fill=fill)
    return out, move_targets(targets, matrices, out_size, min_visibility=min_visibility,
                             min_size=min_size)


def move_targets(
    targets: Sequence[Target],
    matrices: torch.Tensor,
    out_size: tuple[int, int],
    *,
    min_visibility: float = 0.25,
    min_size: float = 2.0,
    regions: torch.Tensor | None = None,
) -> list[Target]:
    """The box part of :func:`apply_matrices`: move, clip and filter the targets' boxes.

    ``matrices [T, 3, 3]`` holds one matrix per target. Boxes are clipped to the output
    ``(0, 0, W, H)``, or to ``regions [T, 4]`` (xyxy, one per target) when given.
    """
    boxes, index, counts = split_targets(targets)
    if boxes.numel() == 0:
        return rebuild_targets(targets, boxes, None, counts)
    m = matrices.to(boxes.device, torch.float32)[index]
    polygons = None
    if all("polygons" in t for t in targets):
        polys = torch.cat([t["polygons"].reshape(-1, 4, 2) for t in targets]).to(torch.float32)
        polygons = transform_points(polys, m)
        moved = polygon_to_xyxy(polygons)
    else:
        moved = transform_boxes(boxes, m)
    h, w = out_size
    region = ((0.0, 0.0, float(w), float(h)) if regions is None
              else regions.to(boxes.device, torch.float32)[index])
    clipped, keep = clip_and_filter(moved, region,
                                    min_visibility=min_visibility, min_size=min_size)
    return rebuild_targets(targets, clipped, keep, counts, polygons=polygons)


# -- ready-made transforms ------------------------------------------------------------------------
def _flip(images: torch.Tensor, targets: Sequence[Target], dim: int,
          which: torch.Tensor | None) -> tuple[torch.Tensor, list[Target]]:
    b, _, h, w = images.shape
    which = torch.ones(b, dtype=torch.bool) if which is None else which.to("cpu", torch.bool)
    flipped = images.flip(dim)
    sel = which.to(images.device).view(b, 1, 1, 1)
    out = torch.where(sel, flipped, images)
    kw = {"hflip": which} if dim == -1 else {"vflip": which}
    m = affine_matrices((h, w), **kw)
    return out, move_targets(targets, m, (h, w), min_visibility=0.0, min_size=0.0)


def hflip(images: torch.Tensor, targets: Sequence[Target],
          which: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Target]]:
    """Flip images left-right (all, or those where ``which [B]`` is True): ``x1' = W - x2``.

    Exact (no resampling); no box is dropped except degenerate ones (zero area).
    Returns ``(images, targets)``.
    """
    return _flip(images, targets, -1, which)


def vflip(images: torch.Tensor, targets: Sequence[Target],
          which: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Target]]:
    """Flip images top-bottom (all, or those where ``which [B]`` is True): ``y1' = H - y2``."""
    return _flip(images, targets, -2, which)


def random_affine(
    images: torch.Tensor,
    targets: Sequence[Target],
    *,
    hflip: float = 0.0,
    vflip: float = 0.0,
    degrees: float | Sequence[float] = 0.0,
    scale: float | Sequence[float] = 1.0,
    translate: float = 0.0,
    min_visibility: float = 0.25,
    min_size: float = 2.0,
    fill: float | Sequence[float] = 0.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[Target]]:
    """Random flips, rotation, scale and translation composed and applied in one warp per batch.

    See :func:`random_affine_matrices` for the parameters' meaning and :func:`apply_matrices`
    for how boxes move. Returns ``(images [B, C, H, W], targets)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(4, 3, 32, 32)
        >>> t = [{"boxes": torch.tensor([[4., 4., 20., 20.]]), "labels": torch.tensor([0])}] * 4
        >>> y, t2 = random_affine(x, t, hflip=0.5, degrees=10, scale=(0.9, 1.1), generator=g)
        >>> y.shape, len(t2)
        (torch.Size([4, 3, 32, 32]), 4)
    """
    size = tuple(images.shape[-2:])
    m = random_affine_matrices(len(images), size, hflip=hflip, vflip=vflip, degrees=degrees,
                               scale=scale, translate=translate, generator=generator)
    return apply_matrices(images, targets, m, min_visibility=min_visibility, min_size=min_size,
                          fill=fill)


def random_resized_crop(
    images: torch.Tensor,
    targets: Sequence[Target],
    size: tuple[int, int] | None = None,
    *,
    scale: Sequence[float] = (0.25, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    min_visibility: float = 0.25,
    min_size: float = 2.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, list[Target]]:
    """Crop a random rectangle (see :func:`random_crop_boxes`) of each image and resize it to
    ``size`` ``(H, W)`` (the input size when None). Returns ``(images, targets)``."""
    in_size = tuple(images.shape[-2:])
    out_size = in_size if size is None else tuple(size)
    crops = random_crop_boxes(len(images), in_size, scale=scale, ratio=ratio, generator=generator)
    m = crop_matrices(crops, out_size)
    return apply_matrices(images, targets, m, out_size, min_visibility=min_visibility,
                          min_size=min_size)


__all__ = [
    "PER_IMAGE_KEYS", "affine_matrices", "random_affine_matrices", "crop_matrices",
    "random_crop_boxes", "translation", "split_targets", "rebuild_targets", "transform_points",
    "transform_boxes", "clip_and_filter", "sampling_grid", "warp_images", "apply_matrices",
    "move_targets",
    "hflip", "vflip", "random_affine", "random_resized_crop",
]
