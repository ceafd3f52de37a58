"""Recover a homography between two images by gradient descent on a photometric loss.

A target image is the photograph warped by a known homography. The estimate starts at the
identity and is moved by Adam so that warping the photograph with it reproduces the target
(mean squared error of grey levels). Everything in between is differentiable Kornia:
``get_perspective_transform`` builds the matrix from the parameters and ``warp_perspective``
resamples the image bilinearly.

Conventions:

* The homography is parametrised by the offsets, in pixels, of the four image corners
  ``(0, 0), (W-1, 0), (W-1, H-1), (0, H-1)`` (top-left, clockwise; ``(x, y)`` order), an
  ``[1, 4, 2]`` tensor. Corner offsets are better conditioned than the 8 matrix entries,
  whose scales differ by orders of magnitude.
* ``H`` maps pixel coordinates of the source photograph to those of the target, as in
  ``warp_perspective(source, H, dsize)``; it is normalised so that ``H[2, 2] = 1``.
* The loss is coarse to fine: first on Gaussian-blurred images (a wide basin that pulls the
  estimate from far away), then on sharper ones (precision), halving the step size each stage.

Images are ``[1, 1, S, S]`` float in [0, 1]: scikit-image's ``astronaut`` in grey, downscaled
(a seeded synthetic scene without scikit-image).

Run it with::

    python examples/kornia_homography.py

It prints the loss before and after (9.6e-02 -> about 4e-13), the true and recovered corner
offsets (up to 6.3 px), the largest corner error in pixels (about 1e-5) and both matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from _scenes import load_image  # beside this script
from kornia.filters import gaussian_blur2d
from kornia.geometry.transform import get_perspective_transform, warp_perspective

#: (blur sigma in pixels, Adam steps) per stage; sigma 0 means the sharp images.
STAGES: tuple[tuple[float, int], ...] = ((4.0, 80), (2.0, 80), (1.0, 80), (0.0, 80))


class Problem(NamedTuple):
    """A source image, the target made from it, and the true corner offsets ``[1, 4, 2]``."""

    image: torch.Tensor
    target: torch.Tensor
    true_offsets: torch.Tensor


class FitResult(NamedTuple):
    """What :func:`fit` found: corner offsets ``[1, 4, 2]`` and the sharp loss before/after."""

    offsets: torch.Tensor
    loss_before: float
    loss_after: float


def corners(size: int) -> torch.Tensor:
    """The four corner pixel centres ``[1, 4, 2]`` of a ``size`` x ``size`` image, TL clockwise."""
    s = float(size - 1)
    return torch.tensor([[[0.0, 0.0], [s, 0.0], [s, s], [0.0, s]]])


def homography_from_offsets(offsets: torch.Tensor, size: int) -> torch.Tensor:
    """The ``[1, 3, 3]`` homography taking each corner to itself plus its offset."""
    c = corners(size).to(offsets)
    return get_perspective_transform(c, c + offsets)


def make_problem(size: int = 64, max_offset: float = 0.12, seed: int = 0) -> Problem:
    """Draw corner offsets uniformly in ``+-max_offset * size`` pixels and warp the image."""
    gen = torch.Generator().manual_seed(seed)
    true_offsets = (torch.rand(1, 4, 2, generator=gen) * 2 - 1) * max_offset * size
    image = load_image(size, grey=True)
    target = warp_perspective(image, homography_from_offsets(true_offsets, size), (size, size))
    return Problem(image, target, true_offsets)


def photometric_loss(
    image: torch.Tensor, target: torch.Tensor, offsets: torch.Tensor, sigma: float = 0.0
) -> torch.Tensor:
    """Mean squared difference of ``target`` and ``image`` warped by ``offsets``.

    With ``sigma > 0`` both are blurred first. Outside the source, the warp reads zeros; the
    target was made the same way, so the loss is exactly zero at the true homography.
    """
    size = image.shape[-1]
    warped = warp_perspective(image, homography_from_offsets(offsets, size), (size, size))
    if sigma > 0:
        k = 2 * round(3 * sigma) + 1  # odd kernel reaching 3 sigma
        warped = gaussian_blur2d(warped, (k, k), (sigma, sigma))
        target = gaussian_blur2d(target, (k, k), (sigma, sigma))
    return F.mse_loss(warped, target)


def fit(
    image: torch.Tensor,
    target: torch.Tensor,
    stages: Sequence[tuple[float, int]] = STAGES,
    lr: float = 0.2,
) -> FitResult:
    """Estimate the corner offsets from the identity, coarse to fine (see :data:`STAGES`).

    ``lr`` is Adam's step size in pixels for the first stage; each later stage halves it.
    """
    offsets = torch.zeros(1, 4, 2, dtype=image.dtype, requires_grad=True)
    opt = torch.optim.Adam([offsets], lr=lr)
    with torch.no_grad():
        loss_before = photometric_loss(image, target, offsets).item()
    for sigma, steps in stages:
        for _ in range(steps):
            opt.zero_grad()
            photometric_loss(image, target, offsets, sigma).backward()
            opt.step()
        for group in opt.param_groups:
            group["lr"] *= 0.5
    with torch.no_grad():
        loss_after = photometric_loss(image, target, offsets).item()
    return FitResult(offsets.detach(), loss_before, loss_after)


def corner_error(offsets: torch.Tensor, true_offsets: torch.Tensor) -> float:
    """The largest distance, in pixels, between where the two homographies send a corner."""
    return (offsets - true_offsets).norm(dim=-1).max().item()


def _fmt_offsets(offsets: torch.Tensor) -> str:
    return " ".join(f"({x:+.3f}, {y:+.3f})" for x, y in offsets[0].tolist())


def main(size: int = 64, stages: Sequence[tuple[float, int]] = STAGES) -> FitResult:
    """Make a problem, fit it, and print the loss and the true vs recovered homography."""
    torch.set_num_threads(1)  # tensors this small run slower when threads contend
    problem = make_problem(size)
    result = fit(problem.image, problem.target, stages)
    print(f"loss before: {result.loss_before:.3e}")
    print(f"loss after {sum(n for _, n in stages)} steps: {result.loss_after:.3e}")
    print(f"true corner offsets (px):      {_fmt_offsets(problem.true_offsets)}")
    print(f"recovered corner offsets (px): {_fmt_offsets(result.offsets)}")
    print(f"max corner error: {corner_error(result.offsets, problem.true_offsets):.2e} px")
    torch.set_printoptions(precision=5, sci_mode=False)
    print("true H:\n", homography_from_offsets(problem.true_offsets, size)[0])
    print("recovered H:\n", homography_from_offsets(result.offsets, size)[0])
    return result


if __name__ == "__main__":
    main()
