"""Predictions in the formats danlu reads besides COCO results: ``danlu predict``'s document,
a folder of YOLO label files, any dataset format; and their alignment to the ground truth.

Each reader returns the predictions of each *image key*, the strings a prediction file may
name an image by (:func:`~danlu.data.formats._common.prediction_keys`); :func:`align`
gives every ground-truth sample the predictions of its first key found. The entry point is
:func:`danlu.data.io.load_predictions`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.formats._common import RawImage, ReadContext, prediction_keys
from danlu.data.formats.coco import image_ids, load_json
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample


def sample_keys(sample: Sample) -> list[str]:
    """Every key a prediction file may name ``sample`` by (its id, its file stem)."""
    return list(prediction_keys(sample, None))


def align(p: Path, gt: Dataset, format: str, per_key: dict[str, Detections],
          ctx: ReadContext) -> Dataset:
    """``gt``'s samples holding the predictions of their key (the first of
    :func:`~danlu.data.formats._common.prediction_keys` that ``per_key`` has); predictions
    no sample takes under any of their keys are an error."""
    samples = []
    used: set[int] = set()  # the predictions taken, by identity: an image's keys share them
    coco_ids = image_ids(gt) if format == "coco-results" else [None] * len(gt)
    for s, cid in zip(gt.samples, coco_ids, strict=True):
        det = None
        for k in prediction_keys(s, cid):
            if k in per_key:
                det = per_key[k]
                used.add(id(det))
                break
        if det is None:
            det = Detections.empty(with_scores=True)
        elif det.scores is None:
            det = det.with_scores(np.ones(len(det), np.float32))
        samples.append(Sample(s.image, s.width, s.height, det, id=s.id, meta=dict(s.meta)))
    for k in per_key:
        if id(per_key[k]) not in used and len(per_key[k]):
            ctx.fail(f"{p}: predictions for image {k!r}, which is not in the ground truth")
    meta: dict[str, Any] = {"format": format, "warnings": ctx.warnings}
    if "coco_category_ids" in gt.meta:  # so that save_predictions writes the same ids
        meta["coco_category_ids"] = gt.meta["coco_category_ids"]
    return Dataset(samples, gt.class_names, meta)


def is_danlu_predictions(p: Path) -> bool:
    """True for the ``predictions.json`` that ``danlu predict`` writes."""
    try:
        doc = load_json(p)
    except DatasetError:
        return False
    return isinstance(doc, dict) and "images" in doc and "class_names" in doc \
        and "categories" not in doc


def danlu_predictions(p: Path, gt: Dataset, ctx: ReadContext) -> dict[str, Detections]:
    """``danlu predict``'s document: images matched by file stem, classes by name."""
    doc = load_json(p)
    names = doc.get("class_names")
    if not isinstance(names, list) or not isinstance(doc.get("images"), list):
        raise DatasetError(f"{p}: expected 'class_names' and 'images' lists")
    to_gt = {c: i for i, c in enumerate(gt.class_names)}
    out: dict[str, Detections] = {}
    for i, rec in enumerate(doc["images"]):
        try:
            det = Detections.from_dict(rec["detections"])
            stem = Path(rec["path"]).stem
        except (KeyError, TypeError, ValueError) as e:
            ctx.fail(f"{p}: images[{i}]: expected path and detections ({e})")
            continue
        unknown = sorted({str(names[k]) for k in set(det.labels.tolist())
                          if not 0 <= k < len(names) or names[k] not in to_gt})
        if unknown:
            ctx.fail(f"{p}: images[{i}].detections: classes not in the ground truth: {unknown}")
            continue
        remap = np.asarray([to_gt.get(n, -1) for n in names], np.int64)
        out[stem] = Detections(det.xyxy, remap[det.labels] if len(det) else det.labels,
                               scores=det.scores)
    return out


def yolo_label_predictions(p: Path, gt: Dataset, ctx: ReadContext) -> dict[str, Detections]:
    from danlu.data.formats.yolo import _parse_labels as _parse_yolo_labels

    sizes = {k: (s.width, s.height) for s in gt.samples for k in sample_keys(s)}
    out = {}
    for f in sorted(p.glob("*.txt")):
        if f.stem not in sizes:
            ctx.fail(f"{f}: no ground-truth image with stem {f.stem!r}")
            continue
        w, h = sizes[f.stem]
        raw = RawImage(None, w, h, f.stem, str(f))
        try:
            _parse_yolo_labels(f, f.read_bytes(), w, h, raw)
        except DatasetError as e:
            ctx.fail(e.message)
            continue
        labels = np.asarray(raw.names, np.int64)
        bad = (labels < 0) | (labels >= len(gt.class_names))
        if bad.any():
            ctx.fail(f"{f}: {raw.lines[0] if raw.lines else 'a line'}: class index outside "
                     f"0..{len(gt.class_names) - 1}")
            continue
        out[f.stem] = Detections(raw.boxes, labels, scores=raw.scores)
    return out


def dataset_predictions(p: Path, gt: Dataset, format: str,
                        read: Callable[[Path, ReadContext], Dataset], ctx: ReadContext
                        ) -> dict[str, Detections]:
    """Predictions stored as a dataset of ``format`` (read by ``read``, its registry
    reader), with image sizes from ``gt`` where the format has none; classes by name."""
    if format == "yolo" and p.is_dir() and (p / "labels").is_dir():
        # predictions are label files; the images (and their sizes) are gt's
        out: dict[str, Detections] = {}
        dirs = sorted({f.parent for f in (p / "labels").rglob("*.txt")})
        for d in dirs:
            for k, v in yolo_label_predictions(d, gt, ctx).items():
                out.setdefault(k, v)
        return out
    sizes = {k: (s.width, s.height) for s in gt.samples for k in sample_keys(s)}
    sub = ReadContext(skip_invalid=ctx.skip_invalid, check_images=False, sizes=sizes)
    ds = read(p.absolute(), sub)
    ctx.warnings.extend(sub.warnings)
    index = gt.class_to_index
    remap = np.asarray([index.get(c, -1) for c in ds.class_names], np.int64)
    out = {}
    for s in ds.samples:
        d = s.detections
        if len(d) and (remap[d.labels] < 0).any():
            unknown = sorted({ds.class_names[i] for i in d.labels[remap[d.labels] < 0]})
            ctx.fail(f"{p}: image {s.id!r}: class names {unknown} are not in the ground truth")
            d = d[remap[d.labels] >= 0]
        d = Detections(d.xyxy, remap[d.labels] if len(d) else d.labels, scores=d.scores,
                       polygons=d.polygons, flags=d.flags, extra=d.extra)
        for k in sample_keys(s):
            out.setdefault(k, d)
    return out


__all__ = ["align", "sample_keys", "is_danlu_predictions", "danlu_predictions",
           "yolo_label_predictions", "dataset_predictions"]
