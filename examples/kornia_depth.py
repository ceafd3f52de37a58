"""Recover a smooth depth map from two views by gradient descent through Kornia.

Two pinhole cameras with the same intrinsics look at a scene, the second shifted sideways by a
baseline. Given the source view and the reference ("destination") view, the depth of every
reference pixel is estimated so that ``kornia.geometry.depth.warp_frame_depth`` (unproject each
reference pixel with its depth, move it into the source camera, project, sample bilinearly)
reproduces the reference view: the photometric loss of self-supervised stereo. The scene is
synthetic but honest: the reference view is the source photograph reprojected with a known
smooth depth map, which the fit never sees.

Conventions:

* Depth is along the optical axis, in the units of the baseline. It is parametrised by its
  inverse on a coarse ``grid`` x ``grid`` lattice of control points, upsampled bicubically
  (``align_corners=True``: the outer control points sit on the image border). Disparity,
  hence the loss, is linear in inverse depth, and the coarse lattice is what makes the map
  smooth and leaves few unknowns for a single image pair.
* Camera matrix ``[[f, 0, c], [0, f, c], [0, 0, 1]]`` with ``f = size`` pixels and
  ``c = (size - 1) / 2``; ``src_trans_dst`` is a translation of ``baseline`` along x. With
  inverse depth in [0.5, 1] and ``baseline = 0.08`` the disparity is 2.6 to 5.1 pixels at
  ``size = 64``.
* As in the homography example the loss runs coarse to fine over blurred images.

Images are ``[1, 3, S, S]`` float RGB in [0, 1]: scikit-image's ``astronaut``, downscaled (a
seeded synthetic texture without scikit-image).

Run it with::

    python examples/kornia_depth.py

It prints the loss before and after (about 4.1e-03 -> about 1e-13), the largest error of the
recovered inverse depth at the control points (about 1e-6), the mean relative depth error over
all pixels, and the true and recovered control lattices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from _scenes import load_image  # beside this script
from kornia.filters import gaussian_blur2d
from kornia.geometry.depth import warp_frame_depth

#: (blur sigma in pixels, Adam steps) per stage; sigma 0 means the sharp images.
STAGES: tuple[tuple[float, int], ...] = ((2.0, 100), (1.0, 100), (0.0, 100))
INVERSE_DEPTH_RANGE = (0.5, 1.0)


class Problem(NamedTuple):
    """Two views and what relates them: the true inverse-depth lattice and the cameras."""

    source: torch.Tensor  # [1, 3, S, S] the view that is resampled
    reference: torch.Tensor  # [1, 3, S, S] the view whose depth is estimated
    true_inverse_depth: torch.Tensor  # [1, 1, G, G] control points
    camera_matrix: torch.Tensor  # [1, 3, 3]
    src_trans_dst: torch.Tensor  # [1, 4, 4]


class FitResult(NamedTuple):
    """What :func:`fit` found: the inverse-depth lattice and the sharp loss before/after."""

    inverse_depth: torch.Tensor
    loss_before: float
    loss_after: float


def cameras(size: int, baseline: float = 0.08) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared camera matrix ``[1, 3, 3]`` and the pose ``src_trans_dst`` ``[1, 4, 4]``."""
    c = (size - 1) / 2
    camera_matrix = torch.tensor([[[float(size), 0.0, c], [0.0, float(size), c], [0, 0, 1.0]]])
    src_trans_dst = torch.eye(4)[None]
    src_trans_dst[0, 0, 3] = baseline
    return camera_matrix, src_trans_dst


def dense_inverse_depth(lattice: torch.Tensor, size: int) -> torch.Tensor:
    """Upsample a ``[1, 1, G, G]`` inverse-depth lattice to ``[1, 1, size, size]``."""
    return F.interpolate(lattice, size=(size, size), mode="bicubic", align_corners=True)


def render(
    source: torch.Tensor,
    inverse_depth: torch.Tensor,
    camera_matrix: torch.Tensor,
    src_trans_dst: torch.Tensor,
) -> torch.Tensor:
    """The reference view predicted from ``source`` and an inverse-depth lattice."""
    depth = 1.0 / dense_inverse_depth(inverse_depth, source.shape[-1])
    return warp_frame_depth(source, depth, src_trans_dst, camera_matrix)


def make_problem(
    size: int = 64, grid: int = 4, baseline: float = 0.08, seed: int = 0
) -> Problem:
    """Draw the inverse-depth lattice uniformly in :data:`INVERSE_DEPTH_RANGE`; render."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = INVERSE_DEPTH_RANGE
    true_inverse_depth = lo + (hi - lo) * torch.rand(1, 1, grid, grid, generator=gen)
    source = load_image(size)
    camera_matrix, src_trans_dst = cameras(size, baseline)
    reference = render(source, true_inverse_depth, camera_matrix, src_trans_dst)
    return Problem(source, reference, true_inverse_depth, camera_matrix, src_trans_dst)


def photometric_loss(
    problem: Problem, inverse_depth: torch.Tensor, sigma: float = 0.0
) -> torch.Tensor:
    """Mean squared difference of the reference view and its prediction, blurred if ``sigma``."""
    predicted = render(problem.source, inverse_depth, problem.camera_matrix,
                       problem.src_trans_dst)
    reference = problem.reference
    if sigma > 0:
        k = 2 * round(3 * sigma) + 1  # odd kernel reaching 3 sigma
        predicted = gaussian_blur2d(predicted, (k, k), (sigma, sigma))
        reference = gaussian_blur2d(reference, (k, k), (sigma, sigma))
    return F.mse_loss(predicted, reference)


def fit(problem: Problem, stages: Sequence[tuple[float, int]] = STAGES,
        lr: float = 0.02) -> FitResult:
    """Estimate the inverse-depth lattice from a flat start at the middle of the range.

    ``lr`` is Adam's step size (inverse-depth units) for the first stage; each later stage
    halves it.
    """
    grid = problem.true_inverse_depth.shape[-1]  # only its size: the values stay unseen
    start = sum(INVERSE_DEPTH_RANGE) / 2
    inverse_depth = torch.full((1, 1, grid, grid), start, requires_grad=True)
    opt = torch.optim.Adam([inverse_depth], lr=lr)
    with torch.no_grad():
        loss_before = photometric_loss(problem, inverse_depth).item()
    for sigma, steps in stages:
        for _ in range(steps):
            opt.zero_grad()
            photometric_loss(problem, inverse_depth, sigma).backward()
            opt.step()
        for group in opt.param_groups:
            group["lr"] *= 0.5
    with torch.no_grad():
        loss_after = photometric_loss(problem, inverse_depth).item()
    return FitResult(inverse_depth.detach(), loss_before, loss_after)


def mean_relative_depth_error(inverse_depth: torch.Tensor, true_inverse_depth: torch.Tensor,
                              size: int) -> float:
    """Mean over pixels of ``|Z - Z_true| / Z_true`` for the dense depth maps."""
    z = 1.0 / dense_inverse_depth(inverse_depth, size)
    z_true = 1.0 / dense_inverse_depth(true_inverse_depth, size)
    return ((z - z_true).abs() / z_true).mean().item()


def main(size: int = 64, grid: int = 4, stages: Sequence[tuple[float, int]] = STAGES) -> FitResult:
    """Make a two-view problem, fit the depth, print the loss and true vs recovered depth."""
    torch.set_num_threads(1)  # tensors this small run slower when threads contend
    problem = make_problem(size, grid)
    result = fit(problem, stages)
    flat = torch.full_like(problem.true_inverse_depth, sum(INVERSE_DEPTH_RANGE) / 2)
    error = (result.inverse_depth - problem.true_inverse_depth).abs().max().item()
    print(f"loss before: {result.loss_before:.3e}")
    print(f"loss after {sum(n for _, n in stages)} steps: {result.loss_after:.3e}")
    print(f"max inverse-depth error at the control points: {error:.2e}")
    print("mean relative depth error: "
          f"{mean_relative_depth_error(result.inverse_depth, problem.true_inverse_depth, size):.2e}"
          f" (flat start: {mean_relative_depth_error(flat, problem.true_inverse_depth, size):.2e})")
    torch.set_printoptions(precision=4, sci_mode=False)
    print("true inverse depth:\n", problem.true_inverse_depth[0, 0])
    print("recovered inverse depth:\n", result.inverse_depth[0, 0])
    return result


if __name__ == "__main__":
    main()
