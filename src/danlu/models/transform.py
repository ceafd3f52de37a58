"""The model's input transform: one object that takes images (and boxes) into the square the
detector sees, and takes detections back to each original image.

Training, the :class:`~danlu.infer.predictor.Predictor`, export and the service all use
:class:`InputTransform`, so a box predicted at serving time is mapped back with exactly the
arithmetic the model was trained with. The pixel work is :func:`danlu.data.pack.resize_image`
(what a pack stores), so a packed dataset and a live image give the same tensor.

* ``letterbox`` keeps the aspect ratio (PIL bilinear) and pads the right and bottom with grey
  114; ``resize`` stretches to ``size x size``.
* Boxes are ``xyxy`` absolute pixels on both sides; forward multiplies x by ``sx`` and y by
  ``sy``, back divides and clips to the original image.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Detections
    >>> t = InputTransform(64)
    >>> image, frame = t.image(np.zeros((50, 100, 3), np.uint8))
    >>> tuple(image.shape), frame.scale
    ((3, 64, 64), (0.64, 0.64))
    >>> det = t.boxes(Detections([[10, 10, 50, 30]], [0]), frame)
    >>> [round(v, 2) for v in det.xyxy[0].tolist()]
    [6.4, 6.4, 32.0, 19.2]
    >>> [round(v, 4) for v in t.back(det, frame).xyxy[0].tolist()]
    [10.0, 10.0, 50.0, 30.0]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from danlu.errors import ConfigError
from danlu.structures import Detections

MODES = ("letterbox", "resize")


@dataclass(frozen=True)
class Frame:
    """Where one image went: its original ``width`` x ``height`` and the factors
    ``scale = (sx, sy)`` that take its pixels into the model's square."""

    width: int
    height: int
    scale: tuple[float, float]


@dataclass(frozen=True)
class InputTransform:
    """Letterbox (or stretch) images to ``size x size`` and map boxes both ways.

    Args:
        size: the model's square input side, pixels.
        mode: ``letterbox`` (keep aspect ratio, pad right/bottom) or ``resize`` (stretch).
        pad_value: the grey level of the letterbox padding.
    """

    size: int
    mode: str = "letterbox"
    pad_value: int = 114

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"resize mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if int(self.size) <= 0:
            raise ConfigError(f"input size must be positive, got {self.size}")

    def frame(self, width: int, height: int) -> Frame:
        """The :class:`Frame` of a ``width`` x ``height`` image, without touching pixels."""
        from danlu.data.pack import resized_shape

        nw, nh = resized_shape(int(width), int(height), self.size, self.mode)
        return Frame(int(width), int(height), (nw / width, nh / height))

    def array(self, image: np.ndarray) -> tuple[np.ndarray, Frame]:
        """An ``HxW``, ``HxWx3`` or ``HxWx4`` uint8 image -> ``(uint8 [size, size, 3], frame)``,
        with numpy and PIL only (no torch: safe in any thread, e.g. a decode pool)."""
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        elif image.shape[2] == 4:
            image = image[:, :, :3]
        h, w = image.shape[:2]
        if (w, h) == (self.size, self.size):
            out, scale = image, (1.0, 1.0)
        else:
            from danlu.data.pack import resize_image

            out, scale = resize_image(image, self.size, self.mode, self.pad_value)
        return np.ascontiguousarray(out), Frame(w, h, scale)

    def image(self, image: np.ndarray) -> tuple[torch.Tensor, Frame]:
        """An ``HxW``, ``HxWx3`` or ``HxWx4`` uint8 image -> ``(uint8 [3, size, size], frame)``."""
        out, frame = self.array(image)
        if not out.flags.writeable:  # e.g. PIL's buffer: torch wants memory it may write
            out = out.copy()
        return torch.from_numpy(out).permute(2, 0, 1).contiguous(), frame

    def boxes(self, det: Detections, frame: Frame) -> Detections:
        """Detections in the original image -> the same in the model's square."""
        return det.scale(*frame.scale)

    def back(self, det: Detections, frame: Frame, *, drop_outside: bool = False) -> Detections:
        """Detections in the model's square -> the original image's pixels, clipped to it.
        With ``drop_outside``, boxes left with no area by the clipping (they lay wholly in
        the letterbox padding, outside the image) are dropped."""
        sx, sy = frame.scale
        out = det.scale(1.0 / sx, 1.0 / sy)
        if len(out):
            w, h = frame.width, frame.height
            out.xyxy = np.clip(out.xyxy, 0, np.array([w, h, w, h], np.float32))
            if drop_outside:
                b = out.xyxy
                inside = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
                if not inside.all():
                    out = out[inside]
        return out

    def to_dict(self) -> dict[str, object]:
        """The checkpoint fields that rebuild this transform (``img_size``, ``resize``)."""
        return {"img_size": int(self.size), "resize": self.mode}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, object]) -> InputTransform:
        """The transform a checkpoint's model was trained with."""
        return cls(int(ckpt["img_size"]), str(ckpt.get("resize", "letterbox")))


__all__ = ["InputTransform", "Frame", "MODES"]
