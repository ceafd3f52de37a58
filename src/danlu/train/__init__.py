"""Training: :func:`train` (the library call behind ``danlu train``, also reachable as
``danlu.train(...)``), :class:`Trainer` and its seams (callbacks, ``compute_loss``, the
sampler, the validator), :class:`TrainConfig`, checkpoints, schedules, EMA.

Example:
    >>> from danlu.train import TrainConfig
    >>> TrainConfig(epochs=2).schedule
    'cosine'
"""

from __future__ import annotations

from danlu._entry import lazy_attributes
from danlu.train.config import TrainConfig

_LAZY = {
    "train": "danlu.train.api",
    "Trainer": "danlu.train.trainer",
    "TrainResult": "danlu.train.trainer",
    "Callback": "danlu.train.callbacks",
    "load_checkpoint": "danlu.train.checkpoint",
    "save_checkpoint": "danlu.train.checkpoint",
}


__getattr__ = lazy_attributes(__name__, _LAZY)

__all__ = ["TrainConfig", *_LAZY]
