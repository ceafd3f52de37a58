"""Training: :func:`train` (the library call behind ``danlu train``, also reachable as
``danlu.train(...)``), :class:`Trainer` and its seams (callbacks, ``compute_loss``, the
sampler, the validator), :class:`TrainConfig`, checkpoints, schedules, EMA.

Example:
    >>> from danlu.train import TrainConfig
    >>> TrainConfig(epochs=2).schedule
    'cosine'
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from danlu.train.config import TrainConfig

_LAZY = {
    "train": "danlu.train.api",
    "Trainer": "danlu.train.trainer",
    "TrainResult": "danlu.train.trainer",
    "Callback": "danlu.train.callbacks",
    "load_checkpoint": "danlu.train.checkpoint",
    "save_checkpoint": "danlu.train.checkpoint",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'danlu.train' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = ["TrainConfig", *_LAZY]
