"""Anchor sizes that follow the dataset.

Anchor-based detectors (RetinaNet, Faster R-CNN) only learn boxes whose size is near one of
their anchors' sizes; torchvision's defaults (32 ... 512 pixels) suit COCO at 800 pixels, not
small images or small objects. :func:`anchor_sizes_from_boxes` reads the sizes off the training
boxes instead.

Anchor sizes are given in one of two forms:

* flat, one base size per pyramid level, e.g. ``(12.0, 24.0, 48.0, 96.0, 192.0)``; each family
  expands it (:func:`expand_anchor_sizes`): RetinaNet uses three octave scales per level
  ``(s, s * 2**(1/3), s * 2**(2/3))``, Faster R-CNN one size ``(s,)``, FCOS one size (which sets
  the level's regression range, ``4s`` to ``8s``);
* nested, torchvision's own form: one tuple of sizes per level, used as given.

Sizes are the square root of the anchor area, in input pixels of the model (after its resize to
``img_size``). Aspect ratios stay torchvision's ``(0.5, 1.0, 2.0)``.

Example:
    >>> import numpy as np
    >>> wh = np.array([[10, 10], [20, 20], [40, 40], [80, 80], [160, 160]], dtype=float)
    >>> anchor_sizes_from_boxes(wh, 3)
    (10.8, 40.0, 153.6)
    >>> expand_anchor_sizes((16.0, 32.0), "retinanet")
    ((16.0, 20.2, 25.4), (32.0, 40.3, 50.8))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from danlu.errors import ConfigError

#: RetinaNet's octave scales within a level.
OCTAVES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))


def anchor_sizes_from_boxes(
    wh: np.ndarray,
    num_levels: int,
    *,
    low: float = 0.02,
    high: float = 0.98,
    min_ratio: float = 2 ** (1 / 3),
    scale: float = 1.0,
) -> tuple[float, ...]:
    """One base anchor size per pyramid level from box widths and heights.

    The sizes are quantiles of ``sqrt(w * h)`` spread evenly between the ``low`` and ``high``
    quantiles (level ``k`` takes quantile ``low + (high - low) * k / (num_levels - 1)``), so the
    smallest level fits the small boxes and the largest the large ones. Each level is then made
    at least ``min_ratio`` times the one below, so levels never repeat a size.

    Args:
        wh: ``[N, 2]`` box widths and heights in pixels, at the size the model sees (multiply by
            ``scale`` otherwise). Boxes with a zero side are ignored.
        num_levels: number of pyramid levels (5 for RetinaNet, 4 for a tiny Faster R-CNN ...).
        low, high: the quantiles of the smallest and largest level.
        min_ratio: smallest ratio between consecutive levels.
        scale: factor applied to ``wh`` first (e.g. ``img_size / original size``).

    Returns:
        ``num_levels`` increasing sizes in pixels, rounded to 0.1.

    Raises:
        ConfigError: when no box has a positive area.
    """
    wh = np.asarray(wh, dtype=np.float64).reshape(-1, 2) * scale
    s = np.sqrt(np.prod(wh, axis=1))
    s = s[np.isfinite(s) & (s > 0)]
    if s.size == 0:
        raise ConfigError("anchor_sizes_from_boxes: no box with a positive area",
                          hint="check the dataset's boxes, or pass anchor_sizes explicitly")
    if num_levels < 1:
        raise ConfigError(f"anchor_sizes_from_boxes: num_levels must be >= 1, got {num_levels}")
    q = np.linspace(low, high, num_levels) if num_levels > 1 else np.array([0.5])
    sizes = np.quantile(s, q)
    for k in range(1, num_levels):
        sizes[k] = max(sizes[k], sizes[k - 1] * min_ratio)
    return tuple(round(float(v), 1) for v in sizes)


def expand_anchor_sizes(sizes: Sequence[Any], family: str) -> tuple[tuple[float, ...], ...]:
    """Per-level anchor size tuples for a detector ``family``.

    ``sizes`` is flat (one base size per level: expanded as the module docstring says) or nested
    (returned as tuples, unchanged).
    """
    if len(sizes) and all(isinstance(v, (tuple, list)) for v in sizes):
        return tuple(tuple(float(x) for x in level) for level in sizes)
    if family == "retinanet":
        return tuple(tuple(round(float(s) * o, 1) for o in OCTAVES) for s in sizes)
    return tuple((float(s),) for s in sizes)


__all__ = ["anchor_sizes_from_boxes", "expand_anchor_sizes", "OCTAVES"]
