"""The trainer's ``augment`` option mapped onto :class:`danlu.augment.DetectionAugment`.

``flips``: horizontal flips (p=0.5, exact, no resampling); ``default``: the augment room's
``default`` preset (flips, affine, colour jitter, mosaic); ``none``: nothing. Randomness comes
only from the generator the trainer passes (seeded per step, so a resumed run draws the same).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from danlu.errors import ConfigError

_PRESET = {"flips": "flip", "default": "default", "none": "none"}
_FILL = 114 / 255  # the letterbox padding grey


@lru_cache(maxsize=8)
def augmenter(mode: str) -> Any:
    """The :class:`~danlu.augment.DetectionAugment` for an ``augment`` option value."""
    from danlu.augment import DetectionAugment

    if mode not in _PRESET:
        raise ConfigError(f"unknown augment mode {mode!r}", hint="flips, default or none")
    return DetectionAugment.preset(_PRESET[mode], fill=_FILL)


def augment_batch(images: torch.Tensor, targets: list[dict[str, torch.Tensor]], mode: str,
                  generator: torch.Generator) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Augment a float ``[B,3,H,W]`` batch in ``[0, 1]`` and its torchvision-style targets."""
    if mode == "none":
        return images, targets
    out, new_targets = augmenter(mode)(images, targets, generator=generator)
    return out, list(new_targets)


__all__ = ["augment_batch", "augmenter"]
