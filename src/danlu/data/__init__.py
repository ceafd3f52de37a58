"""Datasets on disk: formats (VOC, COCO, YOLO, DOTA), conversion, statistics, and the data
commands' library functions.

Example:
    >>> from danlu.data import load_dataset, save_dataset, dataset_stats  # doctest: +SKIP
"""

from danlu.data.imagesize import image_size, image_size_from_bytes
from danlu.data.io import (
    FORMATS,
    detect_format,
    load_dataset,
    load_predictions,
    register_format,
    save_dataset,
    save_predictions,
)
from danlu.data.stats import dataset_stats, plot_stats

__all__ = [
    "FORMATS", "detect_format", "load_dataset", "save_dataset", "load_predictions",
    "save_predictions", "register_format", "image_size", "image_size_from_bytes",
    "dataset_stats", "plot_stats",
]
