"""Affine matrices for box-aware augmentation: composing, drawing at random, applying to points.

Conventions (shared with :mod:`danlu.augment.geometric`, which warps images and moves targets
with these matrices):

* matrices are ``[B, 3, 3]`` float32 affine maps from input to output pixel coordinates, in the
  continuous convention of the boxes (pixel ``i`` covers ``[i, i + 1)``), so ``hflip`` maps
  ``x`` to ``W - x`` and a box's ``x1' = W - x2`` exactly;
* one matrix per image holds every geometric step (crop, flip, scale, rotation, translation);
* randomness comes from an explicit CPU :class:`torch.Generator`; draws are made on the CPU.

Example:
    >>> m = affine_matrices((10, 20), hflip=torch.tensor([True, False]))
    >>> transform_boxes(torch.tensor([[2., 1., 5., 4.]]), m[0]).tolist()
    [[15.0, 1.0, 18.0, 4.0]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "affine_matrices", "random_affine_matrices", "crop_matrices", "random_crop_boxes",
    "translation", "transform_points", "transform_boxes",
]


# -- random numbers -------------------------------------------------------------------------------
def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> torch.Tensor:
    """``n`` float32 draws from ``U(lo, hi)`` on the CPU (the generator's device)."""
    return torch.rand(n, generator=generator) * (hi - lo) + lo


def _bernoulli(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def _pair(value: float | Sequence[float], center: float) -> tuple[float, float]:
    """``v`` -> ``(center - v, center + v)``; a pair is returned as given."""
    if isinstance(value, (int, float)):
        return center - float(value), center + float(value)
    lo, hi = value
    return float(lo), float(hi)


# -- matrices -------------------------------------------------------------------------------------
def translation(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """``[B, 3, 3]`` translations by ``(tx, ty)`` pixels (``[B]`` each)."""
    m = torch.eye(3, dtype=tx.dtype, device=tx.device).repeat(len(tx), 1, 1)
    m[:, 0, 2] = tx
    m[:, 1, 2] = ty
    return m


def affine_matrices(
    size: tuple[int, int],
    *,
    hflip: torch.Tensor | None = None,
    vflip: torch.Tensor | None = None,
    angle: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    translate: torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Compose flips, scale, rotation and translation about the image centre into one matrix each.

    The map is ``x' = T(c + t) · R(angle) · S(scale) · F(flips) · T(-c) · x`` with ``c`` the centre
    ``(W / 2, H / 2)``: a horizontal flip sends ``x`` to ``W - x``.

    Args:
        size: ``(H, W)`` of the image the matrices act in (continuous pixel coordinates).
        hflip, vflip: ``[B]`` bool, which images to flip.
        angle: ``[B]`` rotation in degrees, counter-clockwise as seen on screen (y points down).
        scale: ``[B]`` isotropic zoom factors (> 1 enlarges).
        translate: ``[B, 2]`` shifts in pixels ``(dx, dy)``.
        batch_size: B when every parameter is None.

    Returns:
        ``[B, 3, 3]`` float32 matrices on the CPU (or on the parameters' device).

    Example:
        >>> m = affine_matrices((10, 20), hflip=torch.tensor([True]))
        >>> m[0].tolist()
        [[-1.0, 0.0, 20.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
    """
    given = [t for t in (hflip, vflip, angle, scale, translate) if t is not None]
    b = len(given[0]) if given else batch_size
    if b is None:
        raise ValueError("affine_matrices: give at least one parameter or batch_size")
    device = given[0].device if given else None
    h, w = size
    ones = torch.ones(b, device=device)
    zeros = torch.zeros(b, device=device)
    fx = torch.where(hflip.to(device), -ones, ones) if hflip is not None else ones
    fy = torch.where(vflip.to(device), -ones, ones) if vflip is not None else ones
    s = scale.to(device, torch.float32) if scale is not None else ones
    a = torch.deg2rad(angle.to(device, torch.float32)) if angle is not None else zeros
    cos, sin = torch.cos(a) * s, torch.sin(a) * s
    # R·S·F with y pointing down: a positive angle turns counter-clockwise on screen.
    m = torch.zeros(b, 3, 3, device=device)
    m[:, 0, 0] = cos * fx
    m[:, 0, 1] = sin * fy
    m[:, 1, 0] = -sin * fx
    m[:, 1, 1] = cos * fy
    m[:, 2, 2] = 1.0
    cx, cy = w / 2.0, h / 2.0
    t = translate.to(device, torch.float32) if translate is not None else torch.zeros(b, 2,
                                                                                     device=device)
    # x' = L (x - c) + c + t
    m[:, 0, 2] = cx + t[:, 0] - (m[:, 0, 0] * cx + m[:, 0, 1] * cy)
    m[:, 1, 2] = cy + t[:, 1] - (m[:, 1, 0] * cx + m[:, 1, 1] * cy)
    return m


def random_affine_matrices(
    batch_size: int,
    size: tuple[int, int],
    *,
    hflip: float = 0.0,
    vflip: float = 0.0,
    degrees: float | Sequence[float] = 0.0,
    scale: float | Sequence[float] = 1.0,
    translate: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random :func:`affine_matrices`: flips with probabilities ``hflip`` / ``vflip``, angle
    ``U(-degrees, degrees)`` (or a ``(lo, hi)`` range), scale ``U(lo, hi)`` (a single number means
    a fixed scale) and translation ``U(-translate, translate)`` times the image size.

    Returns ``[B, 3, 3]`` float32 matrices on the CPU (draws use ``generator``).
    """
    h, w = size
    hf = _bernoulli(batch_size, hflip, generator)
    vf = _bernoulli(batch_size, vflip, generator)
    lo, hi = _pair(degrees, 0.0)
    angle = _uniform(batch_size, lo, hi, generator) if hi > lo else None
    slo, shi = (float(scale), float(scale)) if isinstance(scale, (int, float)) else scale
    sc = _uniform(batch_size, slo, shi, generator) if shi > slo else (
        torch.full((batch_size,), float(slo)) if slo != 1.0 else None)
    tr = None
    if translate > 0:
        tr = _uniform(2 * batch_size, -translate, translate, generator).view(batch_size, 2)
        tr = tr * torch.tensor([w, h], dtype=torch.float32)
    return affine_matrices(size, hflip=hf, vflip=vf, angle=angle, scale=sc, translate=tr)


def crop_matrices(crops: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
    """Matrices that map crop rectangles ``[B, 4]`` (xyxy, input pixels) onto ``out_size``
    ``(H, W)``: the resize of a (resized) crop. Returns ``[B, 3, 3]`` float32."""
    crops = crops.to(torch.float32)
    h, w = out_size
    sx = w / (crops[:, 2] - crops[:, 0])
    sy = h / (crops[:, 3] - crops[:, 1])
    m = torch.zeros(len(crops), 3, 3, device=crops.device)
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    m[:, 0, 2] = -crops[:, 0] * sx
    m[:, 1, 2] = -crops[:, 1] * sy
    m[:, 2, 2] = 1.0
    return m


def random_crop_boxes(
    batch_size: int,
    size: tuple[int, int],
    *,
    scale: Sequence[float] = (0.25, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random crop rectangles ``[B, 4]`` (xyxy) for a random resized crop of images ``(H, W)``.

    The crop covers a fraction ``U(scale)`` of the image area with aspect ratio (w/h) drawn
    log-uniformly from ``ratio``; a side longer than the image is shortened to fit (no retries,
    unlike torchvision), and the position is uniform over the places it fits.
    """
    h, w = size
    area = _uniform(batch_size, scale[0], scale[1], generator) * (h * w)
    logr = _uniform(batch_size, math.log(ratio[0]), math.log(ratio[1]), generator)
    r = torch.exp(logr)
    cw = torch.sqrt(area * r).clamp(1.0, w)
    ch = torch.sqrt(area / r).clamp(1.0, h)
    x0 = torch.rand(batch_size, generator=generator) * (w - cw)
    y0 = torch.rand(batch_size, generator=generator) * (h - ch)
    return torch.stack([x0, y0, x0 + cw, y0 + ch], dim=1)


# -- moving points and boxes -----------------------------------------------------------------------
def transform_points(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply ``[N, 3, 3]`` (or one ``[3, 3]``) affine matrices to points ``[N, P, 2]``."""
    lin = matrices[..., :2, :2]
    off = matrices[..., :2, 2]
    if matrices.dim() == 2:
        return points @ lin.T + off
    return torch.einsum("npj,nij->npi", points, lin) + off[:, None, :]


def transform_boxes(boxes: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """The enclosing xyxy boxes of ``[N, 4]`` boxes moved by ``[N, 3, 3]`` (or ``[3, 3]``)
    matrices: the four corners are transformed and their min/max taken.

    Example:
        >>> m = affine_matrices((100, 100), angle=torch.tensor([90.0]))[0]
        >>> transform_boxes(torch.tensor([[10., 20., 30., 60.]]), m).round().tolist()
        [[20.0, 70.0, 60.0, 90.0]]
    """
    from danlu.boxes.convert import polygon_to_xyxy, xyxy_to_polygon

    return polygon_to_xyxy(transform_points(xyxy_to_polygon(boxes), matrices))
