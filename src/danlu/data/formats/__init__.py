"""Readers and writers of the annotation formats: VOC, COCO, YOLO, DOTA.

Each module converts between its format and a :class:`~danlu.structures.Dataset` and keeps
its own conventions at this edge (VOC's 1-based inclusive pixels, COCO's xywh, YOLO's
normalized cxcywh, DOTA's 4-point polygons). Use :func:`danlu.data.io.load_dataset` and
:func:`danlu.data.io.save_dataset` rather than these modules directly.
"""

from danlu.data.formats.coco import read_coco, write_coco
from danlu.data.formats.dota import (
    DOTA_V1_CLASSES,
    DOTA_V2_CLASSES,
    DOTA_V15_CLASSES,
    read_dota,
    write_dota,
)
from danlu.data.formats.voc import read_voc, write_voc
from danlu.data.formats.yolo import read_yolo, write_yolo

__all__ = ["read_voc", "write_voc", "read_coco", "write_coco", "read_yolo", "write_yolo",
           "read_dota", "write_dota", "DOTA_V1_CLASSES", "DOTA_V15_CLASSES", "DOTA_V2_CLASSES"]
