"""danlu: object detection from data to service.

The package root exports the names a user starts from; everything else is imported from its
room (``danlu.boxes``, ``danlu.data``, ``danlu.evaluate`` ...). Heavy rooms load lazily so that
``import danlu`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from danlu.errors import ConfigError, DanluError, DatasetError, ModelError, ServeError
from danlu.structures import Dataset, Detections, Sample

__version__ = "0.1.0"

# name -> module that defines it; imported on first use.
_LAZY = {
    "load_dataset": "danlu.data.io",
    "save_dataset": "danlu.data.io",
    "evaluate": "danlu.evaluate.api",
    "Predictor": "danlu.infer.predictor",
}


# danlu.train is a room and a function: import the (light) room package first, which binds
# the name to it, then bind the function over it (see danlu._entry).
import danlu.train  # noqa: E402, F401  (the import itself is the point)
from danlu._entry import RoomFunction  # noqa: E402

train = RoomFunction("danlu.train", "danlu.train.api", "train")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'danlu' has no attribute {name!r}")
    return getattr(import_module(module), name)


__all__ = [
    "Detections", "Sample", "Dataset", "load_dataset", "save_dataset", "evaluate", "train",
    "Predictor",
    "DanluError", "DatasetError", "ConfigError", "ModelError", "ServeError", "__version__",
]
