"""COCO writing: the instances document, the results list, and the ids both use.

Conventions (as :mod:`danlu.data.formats.coco` reads them back): boxes ``[x, y, width,
height]`` rounded to 4 decimals; category ids from ``Dataset.meta["coco_category_ids"]`` when
they are unique integers, else 1..K; image ids from ``Sample.id`` when they are unique integers,
else 1..N. The flag ``iscrowd`` is written as ``iscrowd``; every other flag (VOC's
``difficult``, ``truncated``, CVAT's ``occluded`` ...) as a boolean in the annotation's
``attributes`` object, the place CVAT's COCO export gives them. pycocotools ignores
``attributes``, so a ``difficult`` box counts as an ordinary one in a COCO evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from danlu.data.formats._common import image_names, place_image
from danlu.structures import Dataset


def category_ids(ds: Dataset) -> list[int]:
    """The COCO category id of each class: ``meta["coco_category_ids"]`` when it fits,
    else 1..K."""
    ids = ds.meta.get("coco_category_ids")
    if (isinstance(ids, list) and len(ids) == len(ds.class_names)
            and all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)):
        return list(ids)
    return list(range(1, len(ds.class_names) + 1))


def image_ids(ds: Dataset) -> list[int]:
    """Integer image ids: the samples' ids when they are unique integers (or digit strings),
    else 1..N."""
    ids = []
    for s in ds.samples:
        i = s.id
        if isinstance(i, str) and i.isdigit() and len(i) < 19:
            i = int(i)
        if not isinstance(i, int) or isinstance(i, bool):
            return list(range(1, len(ds) + 1))
        ids.append(i)
    return ids if len(set(ids)) == len(ids) else list(range(1, len(ds) + 1))


def to_coco_dict(ds: Dataset, file_names: list[str]) -> dict[str, Any]:
    """The COCO instances document of ``ds`` (file names given per sample)."""
    cids = category_ids(ds)
    iids = image_ids(ds)
    images = [{"id": iid, "file_name": fn, "width": int(s.width), "height": int(s.height)}
              for iid, fn, s in zip(iids, file_names, ds.samples, strict=True)]
    anns = []
    cid_arr = np.asarray(cids, np.int64)
    next_id = 1
    for iid, s in zip(iids, ds.samples, strict=True):
        d = s.detections
        if not len(d):
            continue
        xy = d.xyxy.astype(np.float64)
        wh = xy[:, 2:] - xy[:, :2]
        bbox = np.round(np.concatenate([xy[:, :2], wh], axis=1), 4).tolist()
        area = (np.round(d.extra["area"].astype(np.float64), 4).tolist() if "area" in d.extra
                else np.round(wh[:, 0] * wh[:, 1], 4).tolist())
        crowd = d.flag("iscrowd").astype(int).tolist()
        attrs = {k: v.tolist() for k, v in d.flags.items() if k != "iscrowd"}
        cats = cid_arr[d.labels].tolist()
        scores = d.scores.tolist() if d.scores is not None else None
        for k in range(len(d)):
            a = {"id": next_id, "image_id": iid, "category_id": cats[k], "bbox": bbox[k],
                 "area": area[k], "iscrowd": crowd[k]}
            if attrs:
                a["attributes"] = {name: v[k] for name, v in attrs.items()}
            if scores is not None:
                a["score"] = scores[k]
            anns.append(a)
            next_id += 1
    doc: dict[str, Any] = {}
    if "coco_info" in ds.meta:
        doc["info"] = ds.meta["coco_info"]
    if "coco_licenses" in ds.meta:
        doc["licenses"] = ds.meta["coco_licenses"]
    doc["images"] = images
    doc["annotations"] = anns
    doc["categories"] = [{"id": c, "name": n, "supercategory": ""}
                         for c, n in zip(cids, ds.class_names, strict=True)]
    return doc


def write_coco(ds: Dataset, root: Path, *, images: str = "copy",
               progress=None) -> None:  # noqa: ANN001 - a progress wrapper
    """Write ``ds`` as ``root/annotations.json`` and ``root/images/`` (made atomic by the
    caller)."""
    root = Path(root)
    names = image_names(ds)
    (root / "images").mkdir(parents=True, exist_ok=True)
    items = list(zip(ds.samples, names, strict=True))
    if progress is not None:
        items = progress(items, "writing COCO", len(items))
    for sample, name in items:
        place_image(sample, root / "images" / name, images)
    (root / "annotations.json").write_bytes(orjson.dumps(to_coco_dict(ds, names)))


def coco_json_bytes(ds: Dataset, json_path: Path) -> bytes:
    """The instances JSON for writing at ``json_path`` alone: file names relative to its
    folder when the images lie under it, else their base names."""
    base = json_path.parent.resolve()
    names = []
    fallback = image_names(ds)
    for s, fb in zip(ds.samples, fallback, strict=True):
        p = s.path
        try:
            names.append(p.resolve().relative_to(base).as_posix() if p is not None else fb)
        except ValueError:
            names.append(fb)
    return orjson.dumps(to_coco_dict(ds, names))


def to_results_list(preds: Dataset) -> list[dict[str, Any]]:
    """COCO results: one ``{image_id, category_id, bbox, score}`` per box (score 1.0 when
    a sample has none). Images without COCO (integer) ids also get their ``file_name``, so
    that the results pair with their images by name, never by position."""
    cids = np.asarray(category_ids(preds), np.int64)
    named = not all(isinstance(s.id, (int, np.integer)) for s in preds.samples) and all(
        isinstance(s.image, (str, os.PathLike)) for s in preds.samples)
    out = []
    for iid, s in zip(image_ids(preds), preds.samples, strict=True):
        d = s.detections
        if not len(d):
            continue
        extra = {"file_name": os.path.basename(os.fspath(s.image))} if named else {}
        xy = d.xyxy.astype(np.float64)
        bbox = np.round(np.concatenate([xy[:, :2], xy[:, 2:] - xy[:, :2]], 1), 4).tolist()
        scores = d.scores.tolist() if d.scores is not None else [1.0] * len(d)
        cats = cids[d.labels].tolist()
        out.extend({"image_id": iid, "category_id": c, "bbox": b, "score": sc, **extra}
                   for c, b, sc in zip(cats, bbox, scores, strict=True))
    return out


__all__ = ["write_coco", "to_coco_dict", "coco_json_bytes", "to_results_list", "category_ids",
           "image_ids"]
