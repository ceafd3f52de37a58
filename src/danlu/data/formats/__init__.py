"""Readers and writers of the annotation formats: VOC, COCO, YOLO, DOTA, LabelMe, CVAT.

Each module converts between its format and a :class:`~danlu.structures.Dataset` and keeps
its own conventions at this edge (VOC's 1-based inclusive pixels, COCO's xywh, YOLO's
normalized cxcywh, DOTA's 4-point polygons). Use :func:`danlu.data.io.load_dataset` and
:func:`danlu.data.io.save_dataset` rather than these modules directly.

The names below load their module on first use, so that reading one format does not import
the others' parsers (XML, YAML).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

# name -> the module (in this package) that defines it.
_LAZY = {
    "read_coco": "coco", "write_coco": "coco",
    "read_voc": "voc", "write_voc": "voc",
    "read_yolo": "yolo", "write_yolo": "yolo",
    "read_dota": "dota", "write_dota": "dota",
    "read_labelme": "labelme", "write_labelme": "labelme",
    "read_cvat": "cvat", "write_cvat": "cvat",
    "DOTA_V1_CLASSES": "dota", "DOTA_V15_CLASSES": "dota", "DOTA_V2_CLASSES": "dota",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["read_voc", "write_voc", "read_coco", "write_coco", "read_yolo", "write_yolo",
           "read_dota", "write_dota", "read_labelme", "write_labelme", "read_cvat",
           "write_cvat", "DOTA_V1_CLASSES",
           "DOTA_V15_CLASSES", "DOTA_V2_CLASSES"]
