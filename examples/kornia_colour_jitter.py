"""Learn the parameters of a colour jitter by gradient descent through Kornia.

A target image is made from a photograph with known jitter parameters; starting from the
identity, the three parameters are then fitted by Adam so that the jittered photograph
matches the target pixel by pixel (mean squared error). This works because Kornia's
``kornia.enhance`` functions are differentiable in their factors as well as in the image.

Conventions (Kornia 0.9's, applied in this order):

* brightness ``b``: an additive offset, ``x + b``, clipped to [0, 1] (identity ``b = 0``);
* contrast ``c``: a gain, ``x * c``, clipped to [0, 1] (identity ``c = 1``);
* saturation ``s``: scales the HSV saturation, keeping hue and value (identity ``s = 1``).

Images are float RGB tensors ``[1, 3, H, W]`` in [0, 1]. The photograph is scikit-image's
``astronaut`` (downscaled); without scikit-image a seeded synthetic scene stands in.

Run it with::

    python examples/kornia_colour_jitter.py

It prints the loss before and after fitting (8.7e-03 -> about 7e-16) and the recovered
brightness, contrast and saturation beside the true 0.10, 0.80, 1.50.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from _scenes import load_image  # beside this script
from kornia.enhance import adjust_brightness, adjust_contrast, adjust_saturation


class Jitter(NamedTuple):
    """Colour-jitter parameters in the conventions of the module docstring."""

    brightness: float
    contrast: float
    saturation: float


TRUE_JITTER = Jitter(brightness=0.10, contrast=0.80, saturation=1.50)
IDENTITY = Jitter(brightness=0.0, contrast=1.0, saturation=1.0)


class FitResult(NamedTuple):
    """What :func:`fit` found: the parameters and the loss at the start and at the end."""

    jitter: Jitter
    loss_before: float
    loss_after: float


def jitter(
    image: torch.Tensor,
    brightness: float | torch.Tensor,
    contrast: float | torch.Tensor,
    saturation: float | torch.Tensor,
) -> torch.Tensor:
    """Brightness, then contrast, then saturation; differentiable in all three factors."""
    out = adjust_brightness(image, brightness)
    out = adjust_contrast(out, contrast)
    return adjust_saturation(out, saturation)


def fit(
    image: torch.Tensor,
    target: torch.Tensor,
    steps: int = 300,
    lr: float = 0.02,
    start: Jitter = IDENTITY,
) -> FitResult:
    """Fit the jitter that maps ``image`` to ``target`` by Adam on the mean squared error."""
    params = torch.tensor(start, dtype=image.dtype, requires_grad=True)
    opt = torch.optim.Adam([params], lr=lr)

    def loss() -> torch.Tensor:
        return F.mse_loss(jitter(image, params[0], params[1], params[2]), target)

    with torch.no_grad():
        loss_before = loss().item()
    for _ in range(steps):
        opt.zero_grad()
        loss().backward()
        opt.step()
    with torch.no_grad():
        loss_after = loss().item()
    return FitResult(Jitter(*params.detach().tolist()), loss_before, loss_after)


def main(size: int = 64, steps: int = 300) -> FitResult:
    """Make the target with :data:`TRUE_JITTER`, fit from the identity, print the comparison."""
    torch.set_num_threads(1)  # tensors this small run slower when threads contend
    image = load_image(size)
    target = jitter(image, *TRUE_JITTER)
    result = fit(image, target, steps=steps)
    print(f"loss before: {result.loss_before:.3e}")
    print(f"loss after {steps} steps: {result.loss_after:.3e}")
    for name in Jitter._fields:
        print(f"{name}: recovered {getattr(result.jitter, name):.5f}, "
              f"true {getattr(TRUE_JITTER, name):.5f}")
    return result


if __name__ == "__main__":
    main()
