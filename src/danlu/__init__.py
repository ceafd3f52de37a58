"""danlu: object detection from data to service.

The package root exports the names a user starts from; everything else is imported from its
room (``danlu.boxes``, ``danlu.data``, ``danlu.evaluate`` ...). Heavy rooms load lazily so that
``import danlu`` stays fast.
"""

from __future__ import annotations

from danlu.errors import ConfigError, DanluError, DatasetError, ModelError, ServeError
from danlu.structures import Dataset, Detections, Sample

__version__ = "0.1.0"

# name -> module that defines it; imported on first use.
_LAZY = {
    "load_dataset": "danlu.data.io",
    "save_dataset": "danlu.data.io",
    "Predictor": "danlu.infer.predictor",
}


# danlu.train and danlu.evaluate are rooms and functions: import the (light) room packages
# first, which binds the names to them, then bind the functions over them (danlu._entry).
import danlu.evaluate  # noqa: E402, F401  (the imports themselves are the point)
import danlu.train  # noqa: E402, F401
from danlu._entry import RoomFunction, lazy_attributes  # noqa: E402

train = RoomFunction("danlu.train", "danlu.train.api", "train")
evaluate = RoomFunction("danlu.evaluate", "danlu.evaluate.api", "evaluate")


__getattr__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "Detections", "Sample", "Dataset", "load_dataset", "save_dataset", "evaluate", "train",
    "Predictor",
    "DanluError", "DatasetError", "ConfigError", "ModelError", "ServeError", "__version__",
]
