"""The tensor form of :class:`~danlu.structures.Detections`: one image's boxes as torch tensors.

A :class:`Target` is the dict torchvision detectors take as a training target and return as a
prediction, typed once here for every room that passes one along (collate, augmentation, the
heads, the Predictor):

* ``boxes`` float32 ``[N, 4]`` xyxy absolute pixels; ``labels`` int64 ``[N]`` (0-based
  dataset indices);
* optional ``scores`` float32 ``[N]`` (predictions), ``polygons`` float32 ``[N, 4, 2]``
  (oriented boxes, DOTA order) and the per-box flags ``difficult`` / ``iscrowd`` / ``ignore``
  (bool ``[N]``).

Every per-box value has the same first dimension, so filtering a target filters all of them
(augmentation drops boxes that way).

Example:
    >>> import numpy as np
    >>> from danlu.structures import Detections
    >>> det = Detections([[0, 0, 4, 4]], [1], flags={"difficult": np.array([True])})
    >>> t = to_target(det)
    >>> sorted(t), t["boxes"].dtype
    (['boxes', 'difficult', 'labels'], torch.float32)
    >>> from_target(t).allclose(det)
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from danlu.structures import Detections

if TYPE_CHECKING:
    import torch

#: per-box boolean flags a target may carry, as in :class:`Detections`
FLAG_KEYS = ("difficult", "iscrowd", "ignore")


class Target(TypedDict, total=False):
    """One image's boxes as tensors (see the module docstring for shapes and dtypes)."""

    boxes: torch.Tensor
    labels: torch.Tensor
    scores: torch.Tensor
    polygons: torch.Tensor
    difficult: torch.Tensor
    iscrowd: torch.Tensor
    ignore: torch.Tensor


def to_target(det: Detections, device: Any = "cpu") -> Target:
    """``det`` as a :class:`Target` on ``device`` (every array it holds, none dropped)."""
    return Target(**det.to_torch(device))  # type: ignore[typeddict-item]


def from_target(target: Any) -> Detections:
    """A :class:`Target` (or any torchvision detection dict) back to :class:`Detections`, with
    its scores, polygons and flags; other keys are ignored."""

    def _np(value: Any) -> Any:
        return value.detach().cpu().numpy() if hasattr(value, "detach") else value

    flags = {k: _np(target[k]).astype(bool) for k in FLAG_KEYS if k in target}
    return Detections(_np(target["boxes"]), _np(target["labels"]),
                      scores=_np(target["scores"]) if "scores" in target else None,
                      polygons=_np(target["polygons"]) if "polygons" in target else None,
                      flags=flags or None)


def target_to(target: Target, device: Any, non_blocking: bool = False) -> Target:
    """The same target with every tensor on ``device``."""
    return Target(**{k: v.to(device, non_blocking=non_blocking)  # type: ignore[typeddict-item]
                     for k, v in target.items()})


__all__ = ["Target", "FLAG_KEYS", "to_target", "from_target", "target_to"]
