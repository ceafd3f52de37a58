"""Datasets on disk: formats (VOC, COCO, YOLO, DOTA), conversion, statistics, and the data
commands' library functions.

The names below load their module on first use (``import danlu.data`` itself is cheap).

Example:
    >>> from danlu.data import load_dataset, save_dataset, dataset_stats  # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> the module that defines it.
_LAZY = {
    "FORMATS": "danlu.data.io", "detect_format": "danlu.data.io",
    "load_dataset": "danlu.data.io", "save_dataset": "danlu.data.io",
    "load_predictions": "danlu.data.io", "save_predictions": "danlu.data.io",
    "register_format": "danlu.data.io",
    "image_size": "danlu.data.imagesize", "image_size_from_bytes": "danlu.data.imagesize",
    "dataset_stats": "danlu.data.stats", "plot_stats": "danlu.data.stats",
    "conversion_losses": "danlu.data.formats.losses",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FORMATS", "detect_format", "load_dataset", "save_dataset", "load_predictions",
    "save_predictions", "register_format", "image_size", "image_size_from_bytes",
    "dataset_stats", "plot_stats", "conversion_losses",
]
