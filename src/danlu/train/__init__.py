"""Training: :func:`train` (the library call behind ``danlu train``), :class:`Trainer` and its
seams (callbacks, ``compute_loss``, the sampler), :class:`TrainConfig`, checkpoints, schedules, EMA.

Example:
    >>> from danlu.train import TrainConfig
    >>> TrainConfig(epochs=2).schedule
    'cosine'
"""

from __future__ import annotations

import sys
import types
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


class _CallableModule(types.ModuleType):
    """``danlu.train`` is both this package and, at the package root, the function
    :func:`danlu.train.api.train`: importing the package binds the name ``train`` on ``danlu``
    to the package, so the package forwards calls to the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from danlu.train.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["TrainConfig", *_LAZY]
