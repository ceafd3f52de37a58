"""Box geometry: formats, the IoU family (boxes and oriented polygons), the NMS family.

Boxes are absolute-pixel ``xyxy``, continuous (area = (x2 - x1) * (y2 - y1)); oriented boxes
are 4-point polygons ``[N, 4, 2]``. Every function accepts numpy arrays or torch tensors and
returns the same kind; each docstring states its conventions (``>`` vs ``>=``, tie breaking).

Example:
    >>> import numpy as np
    >>> from danlu.boxes import box_iou, nms
    >>> b = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
    >>> nms(b, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist()
    [0, 2]
    >>> round(float(box_iou(b[:1], b[1:2])[0, 0]), 4)
    0.6807
"""

from danlu.boxes.convert import (
    BOX_FORMATS,
    box_area,
    box_convert,
    clip_boxes,
    cxcywha_to_polygon,
    from_yolo,
    polygon_to_cxcywha,
    polygon_to_xyxy,
    scale_boxes,
    to_yolo,
    translate_boxes,
    xyxy_to_polygon,
)
from danlu.boxes.fusion import weighted_boxes_fusion
from danlu.boxes.iou import (
    box_ios,
    box_ios_aligned,
    box_iou,
    box_iou_aligned,
    complete_box_iou,
    complete_box_iou_aligned,
    distance_box_iou,
    distance_box_iou_aligned,
    generalized_box_iou,
    generalized_box_iou_aligned,
)
from danlu.boxes.merge import greedy_nmm, merge_predictions, nmm
from danlu.boxes.nms import batched_nms, iou_guided_nms, nms, polygon_nms
from danlu.boxes.polygon import (
    polygon_area,
    polygon_iou,
    polygon_iou_aligned,
    polygon_iou_pairs,
    polygon_signed_area,
)
from danlu.boxes.soft_nms import soft_nms

__all__ = [
    "BOX_FORMATS", "box_area", "box_convert", "clip_boxes", "cxcywha_to_polygon", "from_yolo",
    "polygon_to_cxcywha", "polygon_to_xyxy", "scale_boxes", "to_yolo", "translate_boxes",
    "xyxy_to_polygon",
    "box_iou", "box_iou_aligned", "generalized_box_iou", "generalized_box_iou_aligned",
    "distance_box_iou", "distance_box_iou_aligned", "complete_box_iou", "complete_box_iou_aligned",
    "box_ios", "box_ios_aligned", "polygon_area", "polygon_signed_area", "polygon_iou",
    "polygon_iou_aligned", "polygon_iou_pairs", "nms", "batched_nms", "iou_guided_nms",
    "polygon_nms", "soft_nms", "weighted_boxes_fusion", "greedy_nmm", "nmm", "merge_predictions",
]
