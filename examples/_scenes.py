"""Images for the Kornia examples: scikit-image's ``astronaut``, or a seeded texture when
scikit-image is not installed. Shared by the example scripts (each imports it from beside
itself)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def synthetic_scene(size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A seeded ``[1, channels, size, size]`` texture in [0, 1]: smooth blobs at two scales
    (bicubic upsampling of 6x6 and 16x16 noise), enough structure for photometric losses."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.zeros(1, channels, size, size)
    for cells, weight in ((6, 0.6), (16, 0.4)):
        coarse = torch.rand(1, channels, cells, cells, generator=gen)
        out += weight * F.interpolate(coarse, size=(size, size), mode="bicubic",
                                      align_corners=True)
    return out.clamp(0, 1)


def load_image(size: int = 64, grey: bool = False) -> torch.Tensor:
    """scikit-image's ``astronaut`` as ``[1, 3, size, size]`` (``[1, 1, ...]`` when ``grey``)
    float in [0, 1]; :func:`synthetic_scene` when scikit-image is not installed."""
    try:
        from skimage import data
    except ImportError:
        return synthetic_scene(size, 1 if grey else 3)
    image = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255.0
    # "area" averages whole pixels, so the downscaled photograph does not alias
    image = F.interpolate(image, size=(size, size), mode="area")
    if grey:
        from kornia.color import rgb_to_grayscale

        image = rgb_to_grayscale(image)
    return image
