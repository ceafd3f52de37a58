"""Reference-white colour correction ("white patch" on the brightest pixels).

Definition used here: the reference white is the set of the brightest ``percent`` % of pixels
**by luminance** ``Y = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601): every pixel whose ``Y``
is at least the ``k``-th largest ``Y``, ``k = max(1, ceil(percent / 100 * H * W))`` (ties at the
threshold are included). Each channel ``c`` is scaled by ``255 / mean_c``, where ``mean_c`` is
the average of channel ``c`` over the reference pixels, so that the reference white becomes
neutral (its average is 255 in every channel). The result is rounded and clipped to
``[0, 255]`` uint8. A channel whose reference average is 0 is left unchanged. Choosing the
pixels by luminance (not channel by channel) keeps one set of reference pixels for all
channels, so a coloured highlight in one channel does not set that channel's gain alone.

Example:
    >>> import numpy as np
    >>> img = np.full((10, 10, 3), (80, 120, 150), np.uint8)
    >>> img[0, :] = (200, 220, 250)  # a bluish "white" row: 10% of the pixels
    >>> out = white_balance(img, percent=10)
    >>> out[0, 0].tolist(), out[5, 5].tolist()
    ([255, 255, 255], [102, 139, 153])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable

import numpy as np

from danlu.data.synth import encode_png
from danlu.errors import ConfigError
from danlu.structures import Dataset, Sample

_LUMA = np.array([0.299, 0.587, 0.114])


def white_balance_gains(image: np.ndarray, percent: float = 5.0) -> np.ndarray:
    """The per-channel gains ``[3]`` (float64) of :func:`white_balance` for ``image``."""
    if not 0 < percent <= 100:
        raise ConfigError(f"percent must be in (0, 100], got {percent}")
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] < 3:
        raise ConfigError(f"white balance needs an HxWx3 image, got shape {img.shape}")
    pix = img[..., :3].reshape(-1, 3).astype(np.float64)
    if len(pix) == 0:
        return np.ones(3)
    y = pix @ _LUMA
    k = max(1, math.ceil(percent / 100 * len(y)))
    thresh = np.partition(y, len(y) - k)[len(y) - k]
    ref = pix[y >= thresh].mean(axis=0)
    return np.where(ref > 0, 255.0 / np.maximum(ref, 1e-12), 1.0)


def white_balance(image: np.ndarray, percent: float = 5.0) -> np.ndarray:
    """Colour-correct an ``HxWx3`` uint8 image so its brightest pixels become neutral white.

    Args:
        image: ``HxWx3`` (or ``HxWx4``, alpha kept) uint8 RGB array.
        percent: the share of brightest pixels (by luminance) taken as the reference white.

    Returns:
        A new uint8 array of the same shape (see the module docstring for the definition).
    """
    img = np.asarray(image)
    gains = white_balance_gains(img, percent)
    out = img.copy()
    out[..., :3] = np.clip(np.round(img[..., :3] * gains), 0, 255).astype(np.uint8)
    return out


def white_balance_dataset(
    ds: Dataset,
    percent: float = 5.0,
    *,
    encode: bool = True,
    progress: Callable[[Iterable[Sample]], Iterable[Sample]] | None = None,
) -> Dataset:
    """Apply :func:`white_balance` to every image; boxes are unchanged.

    Args:
        ds: the dataset.
        percent: see :func:`white_balance`.
        encode: store the corrected images as PNG bytes (lossless, bounded memory) instead
            of arrays.
        progress: optional wrapper around the sample iteration (e.g. a progress bar).

    Returns:
        A new dataset whose samples hold the corrected images and, in ``meta["white_gains"]``,
        the per-channel gains used.

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Dataset, Sample
        >>> img = np.full((4, 4, 3), (50, 100, 200), np.uint8)
        >>> out = white_balance_dataset(Dataset([Sample(img, 4, 4, id="a")], []), encode=False)
        >>> out[0].image[0, 0].tolist(), out[0].meta["white_gains"]
        ([255, 255, 255], [5.1, 2.55, 1.275])
    """
    items: Iterable[Sample] = ds.samples
    samples = []
    for s in progress(items) if progress is not None else items:
        img = s.load_image()
        gains = white_balance_gains(img, percent)
        out = np.clip(np.round(img[..., :3] * gains), 0, 255).astype(np.uint8)
        meta = dict(s.meta)
        meta["white_gains"] = [round(float(g), 6) for g in gains]
        samples.append(dataclasses.replace(s, image=encode_png(out) if encode else out,
                                           meta=meta))
    return Dataset(samples, ds.class_names, dict(ds.meta))


__all__ = ["white_balance", "white_balance_gains", "white_balance_dataset"]
