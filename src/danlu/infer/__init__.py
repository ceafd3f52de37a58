"""Inference: :class:`Predictor` (a checkpoint or model as a function from images to
:class:`~danlu.structures.Detections`).

Example:
    >>> from danlu.infer import Predictor                                 # doctest: +SKIP
    >>> Predictor("runs/exp/best.pt").predict("image.jpg")                # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "Predictor":
        from danlu.infer.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'danlu.infer' has no attribute {name!r}")


__all__ = ["Predictor"]
