"""Shared plumbing of the evaluators: aligning predictions with ground truth and flattening
per-image :class:`~danlu.structures.Detections` into flat arrays with an image index."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections


@dataclass
class Flat:
    """The boxes of all images in one set of flat arrays (image order, then box order)."""

    image: np.ndarray  # [N] int64, index of the sample
    labels: np.ndarray  # [N] int64
    xyxy: np.ndarray  # [N, 4] float64 (float32 from flatten(share=True))
    scores: np.ndarray | None  # [N] float64
    polygons: np.ndarray | None  # [N, 4, 2] float64 (None unless asked for)
    crowd: np.ndarray  # [N] bool
    ignore: np.ndarray  # [N] bool
    difficult: np.ndarray  # [N] bool
    area: np.ndarray | None  # [N] float64 from extra["area"], when every image has it
    # [N, 4] float64 xywh from extra["coco_bbox"] (the numbers of a COCO file), when every
    # image has it
    coco_bbox: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


def align_predictions(gt: Dataset, predictions: Dataset | Sequence[Detections]) -> list[Detections]:
    """One ``Detections`` per ground-truth sample, in ``gt`` order.

    A list is taken in order (its length must match). A ``Dataset`` is matched by sample ``id``
    when the ids of ``gt`` are unique; a prediction for an unknown id is an error, and a sample
    without predictions gets none. Predictions must carry scores (labels are checked by
    :func:`check_labels` once flattened).
    """
    n = len(gt)
    if isinstance(predictions, Dataset):
        ids = [s.id for s in gt.samples]
        by_id = {i: k for k, i in enumerate(ids)}
        if len(by_id) == n and None not in by_id:
            found: list[Detections | None] = [None] * n
            for s in predictions.samples:
                k = by_id.get(s.id)
                if k is None:
                    raise ConfigError(f"predictions: image {s.id!r} is not in the ground truth",
                                      hint="predictions must use the ground truth's image ids")
                d = found[k]
                found[k] = s.detections if d is None or len(d) == 0 else Detections.concat(
                    [d, s.detections])
            out = [Detections.empty(with_scores=True) if d is None else d for d in found]
        elif len(predictions) == n:
            out = predictions.detections()
        else:
            raise ConfigError(f"predictions hold {len(predictions)} images, the ground truth {n}, "
                              "and image ids cannot match them")
        pred_names = list(predictions.class_names)
        if pred_names and pred_names != list(gt.class_names):
            out = _remap_labels(out, pred_names, list(gt.class_names))
    else:
        out = list(predictions)
        if len(out) != n:
            raise ConfigError(f"predictions: {len(out)} Detections for {n} ground-truth images",
                              hint="pass one Detections per ground-truth sample, in order")
    for k, d in enumerate(out):
        if d.scores is None and d.xyxy.shape[0]:
            raise ConfigError(f"predictions for image {gt.samples[k].id!r} have no scores")
    return out


def _remap_labels(dets: list[Detections], src: list[str], dst: list[str]) -> list[Detections]:
    """Relabel predictions whose class list differs from the ground truth's, by name."""
    index = {name: i for i, name in enumerate(dst)}
    missing = [name for name in src if name not in index]
    if missing:
        raise ConfigError(f"predictions name classes the ground truth lacks: {missing[:5]}")
    table = np.array([index[name] for name in src], np.int64)
    out = []
    for d in dets:
        if len(d):
            d = d[slice(None)]
            d.labels = table[d.labels]
        out.append(d)
    return out


def flatten(dets: Sequence[Detections], *, scores: bool = False,
            polygons: bool = False, share: bool = False) -> Flat:
    """Concatenate per-image detections into :class:`Flat` arrays (float64 coordinates).

    ``share=True`` is for callers that only read the arrays: where the per-image arrays are
    consecutive pieces of one array (as a reader's are) the result is a view of it rather
    than a copy, and ``xyxy`` keeps its float32.
    """
    counts = np.fromiter((d.xyxy.shape[0] for d in dets), np.int64, len(dets))
    image = np.repeat(np.arange(len(dets), dtype=np.int64), counts)
    nonempty = [d for d in dets if d.xyxy.shape[0]]
    total = int(counts.sum())
    if not nonempty:
        z = np.zeros(0, bool)
        return Flat(image, np.zeros(0, np.int64), np.zeros((0, 4)),
                    np.zeros(0) if scores else None, np.zeros((0, 4, 2)) if polygons else None,
                    z, z, z, None)
    join = _join if share else np.concatenate
    xyxy = join([d.xyxy for d in nonempty])
    xyxy = xyxy if share else xyxy.astype(np.float64)
    labels = join([d.labels for d in nonempty])
    score = join([d.scores for d in nonempty]).astype(np.float64) if scores else None
    names = {k for d in nonempty for k in d.flags}

    def flag(name: str) -> np.ndarray:
        if name not in names:
            return np.zeros(total, bool)
        return join([d.flag(name) for d in nonempty])

    polys = None
    if polygons:
        polys = np.concatenate([d.polygons if d.polygons is not None else _box_polygons(d.xyxy)
                                for d in nonempty]).astype(np.float64)
    return Flat(image=image, labels=labels, xyxy=xyxy, scores=score, polygons=polys,
                crowd=flag("iscrowd"), ignore=flag("ignore"), difficult=flag("difficult"),
                area=_extra(nonempty, "area", (-1,), join),
                coco_bbox=_extra(nonempty, "coco_bbox", (-1, 4), join))


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, or a view without a copy when the parts are consecutive
    pieces of one C-contiguous array (a reader's per-image slices of its columns)."""
    base = parts[0].base
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous or base.ndim == 0:
        return np.concatenate(parts)
    dtype, strides = base.dtype, base.strides
    first = at = parts[0].__array_interface__["data"][0]
    for p in parts:  # cheap tests first: this runs once per image
        if p.base is not base or p.strides != strides or p.dtype is not dtype \
                or p.__array_interface__["data"][0] != at:
            return np.concatenate(parts)
        at += p.nbytes
    row = strides[0] if base.ndim > 1 else base.itemsize
    start = (first - base.__array_interface__["data"][0]) // row
    return base[start:start + (at - first) // row]


def _extra(dets: Sequence[Detections], name: str, shape: tuple[int, ...],
           join: Callable[[list[np.ndarray]], np.ndarray] = np.concatenate
           ) -> np.ndarray | None:
    """``extra[name]`` of every ``Detections`` joined as float64, or None when one lacks it
    (or has it in another shape)."""
    parts = []
    for d in dets:
        v = d.extra.get(name)
        if v is None or v.size != len(d) * (1 if len(shape) == 1 else shape[1]):
            return None
        want = (len(d), *shape[1:])
        parts.append(v if v.shape == want else v.reshape(want))
    return join(parts).astype(np.float64, copy=False)


def check_labels(flat: Flat, num_classes: int, gt: Dataset, what: str) -> None:
    """Every label must index ``gt.class_names``; name the first image where one does not."""
    if len(flat.labels) == 0:
        return
    bad = (flat.labels < 0) | (flat.labels >= num_classes)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ConfigError(f"{what} for image {gt.samples[int(flat.image[k])].id!r}: label "
                          f"{int(flat.labels[k])} outside 0..{num_classes - 1}")


def _box_polygons(xyxy: np.ndarray) -> np.ndarray:
    """``[N, 4]`` xyxy -> ``[N, 4, 2]`` corner polygons in DOTA order (x1y1, x2y1, x2y2, x1y2)."""
    from danlu.boxes.convert import xyxy_to_polygon

    return xyxy_to_polygon(np.asarray(xyxy).reshape(-1, 4))


def check_iou_threshold(iou: float) -> float:
    """A matching IoU threshold must lie in (0, 1]."""
    iou = float(iou)
    if not 0.0 < iou <= 1.0:
        raise ConfigError(f"IoU threshold {iou} is outside (0, 1]")
    return iou
