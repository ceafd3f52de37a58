"""Batched colour jitter: brightness, contrast, saturation and hue, random per image.

All four adjustments are linear in the pixel values, so they are fused into one ``3x3`` colour
matrix plus an offset per image and applied with a single batched matrix product, then clamped
to ``[0, 1]`` once:

* brightness ``b``: ``x * b`` (as torchvision);
* contrast ``c``: ``c * x + (1 - c) * mean(gray(x))``, the mean taken per image (as torchvision);
* saturation ``s``: ``s * x + (1 - s) * gray(x)`` with ``gray = 0.299 R + 0.587 G + 0.114 B``;
* hue ``h`` (in turns, ``[-0.5, 0.5]``): a rotation of RGB space by ``2 pi h`` about the gray
  axis, the linear counterpart of torchvision's HSV hue shift: grays stay, a third of a turn
  sends red to green exactly as HSV does, and in between it is close but not equal (the mean
  absolute difference on random colours is about 0.8x the shift itself).

They are applied in that fixed order. Unlike torchvision there is no clamp between the steps,
only at the end; a single step matches torchvision's result (hue approximately).

Images are float ``[B, 3, H, W]`` in ``[0, 1]`` on any device; gradients flow to them.

Example:
    >>> import torch
    >>> x = torch.full((2, 3, 4, 4), 0.5)
    >>> y = adjust_color(x, brightness=torch.tensor([1.2, 0.5]))
    >>> y[:, 0, 0, 0].tolist()
    [0.6000000238418579, 0.25]
"""

from __future__ import annotations

import math

import torch

#: Luma weights (ITU-R 601), as torchvision's ``rgb_to_grayscale``.
GRAY = (0.299, 0.587, 0.114)

def color_matrices(
    brightness: torch.Tensor | None = None,
    contrast: torch.Tensor | None = None,
    saturation: torch.Tensor | None = None,
    hue: torch.Tensor | None = None,
    *,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fused colour transform of each image: ``y = A x + (1 - c) b m`` with ``m`` the image's
    mean gray value.

    Args:
        brightness, contrast, saturation: ``[B]`` factors (1 = unchanged).
        hue: ``[B]`` shifts in turns (0 = unchanged).
        batch_size: B when every factor is None.

    Returns:
        ``(A [B, 3, 3], gain [B] = c * b, offset_scale [B] = (1 - c) * b)``, float32, CPU.
    """
    given = [t for t in (brightness, contrast, saturation, hue) if t is not None]
    b = len(given[0]) if given else batch_size
    if b is None:
        raise ValueError("color_matrices: give at least one factor or batch_size")
    one = torch.ones(b, dtype=torch.float64)
    br = brightness.double().cpu() if brightness is not None else one
    co = contrast.double().cpu() if contrast is not None else one
    sa = saturation.double().cpu() if saturation is not None else one
    gray = torch.tensor(GRAY, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    sat = sa[:, None, None] * eye + (1 - sa)[:, None, None] * gray.expand(3, 3)
    a = sat
    if hue is not None:
        # Rodrigues rotation about the gray axis k = (1, 1, 1) / sqrt(3)
        theta = hue.double().cpu() * (2 * math.pi)
        cos, sin = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
        k = torch.full((3,), 1 / math.sqrt(3), dtype=torch.float64)
        cross = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]],
                             dtype=torch.float64)
        rot = cos * eye + sin * cross + (1 - cos) * torch.outer(k, k)
        a = rot @ a
    gain = co * br
    return (a * gain[:, None, None]).float(), gain.float(), ((1 - co) * br).float()


def adjust_color(
    images: torch.Tensor,
    brightness: torch.Tensor | None = None,
    contrast: torch.Tensor | None = None,
    saturation: torch.Tensor | None = None,
    hue: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply per-image colour factors (see the module docstring) and clamp to ``[0, 1]``.

    Args:
        images: float ``[B, 3, H, W]`` in ``[0, 1]``.
        brightness, contrast, saturation: ``[B]`` factors or None (unchanged).
        hue: ``[B]`` shifts in turns or None.
        out: optional contiguous ``[B, 3, H, W]`` tensor to write into (no autograd).

    Returns:
        ``[B, 3, H, W]`` images, dtype and device of ``images``.
    """
    bsz, ch, h, w = images.shape
    if ch != 3:
        raise ValueError(f"adjust_color needs 3-channel RGB images, got {ch} channels")
    a, _, off = color_matrices(brightness, contrast, saturation, hue, batch_size=bsz)
    dev, dt = images.device, images.dtype
    a = a.to(dev, dt)
    flat = images.reshape(bsz, 3, h * w)
    dest = None if out is None else out.view(bsz, 3, h * w)
    if contrast is not None:
        gray = torch.tensor(GRAY, device=dev, dtype=dt)
        mean = (flat.mean(dim=2) * gray).sum(dim=1)  # [B] mean gray of the input
        bias = (off.to(dev, dt) * mean)[:, None, None]
        res = (torch.baddbmm(bias, a, flat) if dest is None
               else torch.baddbmm(bias, a, flat, out=dest))
    else:
        res = torch.bmm(a, flat) if dest is None else torch.bmm(a, flat, out=dest)
    return res.clamp_(0.0, 1.0).view(bsz, 3, h, w)


def random_color_factors(
    batch_size: int,
    *,
    brightness: float = 0.0,
    contrast: float = 0.0,
    saturation: float = 0.0,
    hue: float = 0.0,
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor | None]:
    """Random factors as torchvision's ``ColorJitter``: brightness, contrast and saturation
    ``U(max(0, 1 - v), 1 + v)``, hue ``U(-v, v)``; each image is jittered with probability ``p``
    (factors of the others are identity). A zero strength gives None. CPU tensors ``[B]``."""
    keep = torch.rand(batch_size, generator=generator) < p
    out: dict[str, torch.Tensor | None] = {}
    for name, v, ident in (("brightness", brightness, 1.0), ("contrast", contrast, 1.0),
                           ("saturation", saturation, 1.0), ("hue", hue, 0.0)):
        if v <= 0:
            out[name] = None
            continue
        lo, hi = (-v, v) if name == "hue" else (max(0.0, 1 - v), 1 + v)
        f = torch.rand(batch_size, generator=generator) * (hi - lo) + lo
        out[name] = torch.where(keep, f, torch.full_like(f, ident))
    return out


def color_jitter(
    images: torch.Tensor,
    *,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
    hue: float = 0.02,
    p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random colour jitter, independent per image (boxes do not change).

    Args:
        images: float ``[B, 3, H, W]`` in ``[0, 1]`` on any device.
        brightness, contrast, saturation, hue: strengths as torchvision's ``ColorJitter``.
        p: probability that an image is jittered.
        generator: CPU generator for the factors.

    Returns:
        ``[B, 3, H, W]`` images in ``[0, 1]``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> color_jitter(torch.rand(2, 3, 8, 8), generator=g).shape
        torch.Size([2, 3, 8, 8])
    """
    f = random_color_factors(len(images), brightness=brightness, contrast=contrast,
                             saturation=saturation, hue=hue, p=p, generator=generator)
    if all(v is None for v in f.values()):
        return images
    return adjust_color(images, **f)


__all__ = ["GRAY", "color_matrices", "adjust_color", "random_color_factors", "color_jitter"]
