"""COCO: one instances JSON for all images, and COCO *results* JSON for predictions.

Layout read: a ``.json`` file, or a folder with ``annotations.json`` (danlu's layout, images in
``images/``) or ``annotations/instances_<split>.json`` (the official layout: ``train2017``,
``val2017`` ...). The images of split ``S`` are in ``<root>/S/`` (COCO 2017), else
``<root>/images/S/``, else ``<root>/images/``. A folder with several splits needs ``split=``
(``--split``): the error lists them, nothing is guessed; a folder with one reads it. Samples
read from a split carry ``meta["split"]``. File names are relative to the image folder; one
that is absolute, or climbs out with ``..``, is read where it points (as pycocotools and
globox read it; the writers make their own names, so nothing is written outside the output).

Conventions: COCO boxes are ``[x, y, width, height]`` in continuous pixels; danlu holds
``xyxy = [x, y, x + width, y + height]`` (float32) and keeps the file's numbers, float64, in
``Detections.extra["coco_bbox"]``: the COCO evaluation uses them while they still match
``xyxy`` (:func:`danlu.evaluate.coco.coco_columns`), so that it sees the boxes pycocotools
sees in the same file. Category ids may be any integers: labels index the categories sorted
by id, and ``Dataset.meta["coco_category_ids"]`` keeps the ids (label i has id
``coco_category_ids[i]``); the writer writes them back. Image ids are kept as ``Sample.id``.
``iscrowd`` is the flag ``iscrowd``; each true/false entry of an annotation's ``attributes``
object (CVAT's COCO export; danlu writes ``difficult`` there) is a flag of its name. ``area``
is kept in ``Detections.extra["area"]`` (float64) and written back (else the box area is
written). Segmentation masks are not kept.

A results file is a JSON list of ``{"image_id", "category_id", "bbox", "score"}``.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> det = Detections(np.array([[10, 20, 40, 60]]), np.array([0]))
    >>> ds = Dataset([Sample(None, 64, 64, det, id=7)], ["cat"], {"coco_category_ids": [3]})
    >>> doc = to_coco_dict(ds, ["a.jpg"])
    >>> doc["annotations"][0]["bbox"], doc["categories"][0]["id"]
    ([10.0, 20.0, 30.0, 40.0], 3)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Real
from operator import itemgetter, methodcaller
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from danlu.data.formats._common import (
    REASONS,
    FileIndex,
    ReadContext,
    box_problems,
    make_detections,
    read_join_str,
)

# the writers live in coco_write; they are part of this module's interface
from danlu.data.formats.coco_write import (
    category_ids,
    coco_json_bytes,
    image_ids,
    to_coco_dict,
    to_results_list,
    write_coco,
)
from danlu.errors import DatasetError
from danlu.structures import Dataset, Sample


def is_coco(path: Path) -> bool:
    """True for a ``.json`` file or a folder holding COCO annotations (``annotations.json``,
    or ``annotations/*.json``: one split or several)."""
    if path.is_file():
        return path.suffix.lower() == ".json"
    return path.is_dir() and ((path / "annotations.json").is_file() or bool(_splits(path)))


def _splits(path: Path) -> dict[str, Path]:
    """``split -> annotations/instances_<split>.json`` (else every ``annotations/*.json``
    by stem, when there is no ``instances_`` file), sorted by split name."""
    ann = path / "annotations"
    if not ann.is_dir():
        return {}
    found = sorted(ann.glob("instances_*.json"))
    if found:
        return {p.stem[len("instances_"):]: p for p in found}
    return {p.stem: p for p in sorted(ann.glob("*.json")) if not p.name.startswith(".")}


def _find_json(path: Path, split: str | None = None) -> Path:
    """The instances file of the folder ``path`` for ``split`` (None: the only one).

    Raises:
        DatasetError: no annotations; several splits and no ``split`` (never guessed); a
            ``split`` the folder does not have. The message lists the splits found.
    """
    splits = _splits(path)
    if split:
        if split in splits:
            return splits[split]
        have = (f"splits found: {', '.join(splits)}" if splits
                else "the folder has no annotations/instances_<split>.json, so no splits")
        raise DatasetError(f"{path}: COCO split {split!r} not found ({have})",
                           hint=f"expected {path / 'annotations' / f'instances_{split}.json'}")
    if (path / "annotations.json").is_file():
        return path / "annotations.json"
    if len(splits) == 1:
        return next(iter(splits.values()))
    if splits:
        names = ", ".join(splits)
        first, first_json = next(iter(splits.items()))
        raise DatasetError(f"{path}: {len(splits)} COCO splits ({names}); which one to read?",
                           hint=f"pass --split (split= in Python), e.g. --split {first}, or "
                                f"the split's file as the dataset: {first_json}")
    raise DatasetError(f"{path}: no COCO annotations found",
                       hint="expected annotations.json or annotations/instances_*.json")


def load_json(path: Path) -> Any:
    """Parse a JSON file with orjson; errors name the file, the line and the column."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise DatasetError(f"{path}: line {e.lineno} column {e.colno}: malformed JSON "
                           f"({e.msg})") from e


def _image_root(json_path: Path, first: str | None, ctx: ReadContext) -> Path:
    parent = json_path.parent
    cands = [parent / "images", parent]
    stem = json_path.stem
    if parent.name == "annotations":
        split = stem[len("instances_"):] if stem.startswith("instances_") else stem
        top = parent.parent
        cands = [top / split, top / "images" / split, top / "images", top, *cands]
    if first:
        for c in cands:
            try:
                if (c / first).is_file():
                    return c
            except (OSError, ValueError):
                break
    return next((c for c in cands if c.is_dir() and c.name != "annotations"), parent)


def _where(kind: str, i: int, key: str | None = None) -> str:
    return f"{kind}[{i}]" + (f".{key}" if key else "")


def _is_num(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def read_coco(path: Path, ctx: ReadContext, *, image_root: Path | None = None) -> Dataset:
    """Read a COCO instances file (or a folder holding one); see the module docstring."""
    path = Path(path)
    json_path = path if path.is_file() else _find_json(path, ctx.split)
    split = (json_path.stem[len("instances_"):] if json_path.stem.startswith("instances_")
             else json_path.stem) if json_path.parent.name == "annotations" else None
    doc = load_json(json_path)
    src = str(json_path)
    if not isinstance(doc, dict):
        raise DatasetError(f"{src}: expected a JSON object with images, annotations and "
                           f"categories, got {type(doc).__name__}",
                           hint="a JSON list is a COCO results file: use load_predictions")
    images = doc.get("images")
    anns = doc.get("annotations", [])
    cats = doc.get("categories")
    for key, val in (("images", images), ("annotations", anns), ("categories", cats)):
        if not isinstance(val, list):
            raise DatasetError(f"{src}: {key}: expected a list, got "
                               f"{type(val).__name__ if val is not None else 'nothing'}")

    # categories -> labels (sorted by id)
    cat_ids: list[int] = []
    cat_names: dict[int, str] = {}
    for i, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("id"), int) or isinstance(
                c.get("id"), bool):
            raise DatasetError(f"{src}: {_where('categories', i, 'id')}: expected an integer id")
        if not isinstance(c.get("name"), str):
            raise DatasetError(f"{src}: {_where('categories', i, 'name')}: expected a string")
        if c["id"] in cat_names:
            raise DatasetError(f"{src}: {_where('categories', i, 'id')}: duplicate id {c['id']}")
        cat_ids.append(c["id"])
        cat_names[c["id"]] = c["name"]
    cat_ids.sort()
    names_by_id = [cat_names[i] for i in cat_ids]
    if ctx.class_names is not None:
        known = {n: j for j, n in enumerate(ctx.class_names)}
        missing = [n for n in names_by_id if n not in known]
        if missing:
            raise DatasetError(f"{src}: categories: unknown class names {missing[:5]}")
        cat_to_label = {cid: known[cat_names[cid]] for cid in cat_ids}
        class_names = list(ctx.class_names)
    else:
        cat_to_label = {cid: j for j, cid in enumerate(cat_ids)}
        class_names = names_by_id

    # images
    first = images[0].get("file_name") if images and isinstance(images[0], dict) else None
    if image_root is None:
        image_root = _image_root(json_path, first if isinstance(first, str) else None, ctx)
    index = FileIndex()
    id_to_row: dict[Any, int] = {}
    rows = _image_rows_fast(images, str(image_root), index, ctx)
    if rows is None:
        rows = []
        for i, im in enumerate(ctx.progress(images, "reading COCO images", len(images))):
            try:
                rows.append(_image_row(im, i, src, str(image_root), index, ctx, id_to_row,
                                       len(rows)))
            except DatasetError as e:
                ctx.fail(e.message, e.hint)
    else:
        id_to_row = {r[0]: j for j, r in enumerate(rows)}
    wh_rows = np.asarray([(r[2], r[3]) for r in rows], np.float64).reshape(-1, 2)

    # annotations: a vectorised fast path, a checking slow path on any surprise
    n = len(anns)
    try:
        row_of = np.fromiter(map(id_to_row.__getitem__, map(itemgetter("image_id"), anns)),
                             np.int64, n)
        labels = np.fromiter(map(cat_to_label.__getitem__, map(itemgetter("category_id"),
                                                                anns)), np.int64, n)
        bbox = np.asarray(list(map(itemgetter("bbox"), anns))).reshape(n, 4)
        if bbox.dtype.kind not in "iuf":
            raise TypeError("bbox values are not all numbers")
        bbox = bbox.astype(np.float64)
        crowd = np.fromiter(map(methodcaller("get", "iscrowd", 0), anns), np.int64, n)
        area_list = list(map(methodcaller("get", "area"), anns))
        if None in area_list:
            area_list = [np.nan if v is None else v for v in area_list]
        area = np.asarray(area_list, np.float64)
        ok = area.shape == (n,) and bool(((crowd == 0) | (crowd == 1)).all())
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError):
        ok = False
    if ok:
        xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)
        negative = (bbox[:, 2] < 0) | (bbox[:, 3] < 0)
        bad, reason = box_problems(xyxy, wh_rows[row_of], tol=1.0)
        if len(bad) or negative.any():
            ok = False
    if not ok:
        row_of, labels, bbox, crowd, area, kept_anns = _slow_annotations(
            anns, src, id_to_row, cat_to_label, wh_rows, ctx)
        xyxy = np.concatenate([bbox[:, :2], bbox[:, :2] + bbox[:, 2:]], axis=1)
    if ok:
        kept_anns = range(n)
    attributes = _attribute_flags(anns, kept_anns, ctx)
    kept = {f"coco_{key}": doc[key] for key in ("info", "licenses") if key in doc}
    del doc, images, anns  # the parsed JSON, before the samples take its memory's place
    crowd_b = crowd.astype(bool)
    missing = np.isnan(area)
    if missing.any():  # no "area": the box area
        area = np.where(missing, (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1]), area)
    order = np.argsort(row_of, kind="stable")
    counts = np.bincount(row_of, minlength=len(rows))
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    xyxy_o = np.ascontiguousarray(xyxy[order], np.float32)
    labels_o = np.ascontiguousarray(labels[order], np.int64)
    crowd_o = np.ascontiguousarray(crowd_b[order])
    attributes = {k: np.ascontiguousarray(v[order]) for k, v in attributes.items()}
    area_o = np.ascontiguousarray(area[order], np.float64)
    bbox_o = np.ascontiguousarray(bbox[order], np.float64)
    samples = [
        Sample(p, w, h, make_detections(xyxy_o[a:b], labels_o[a:b],
                                        flags={"iscrowd": crowd_o[a:b],
                                               **{k: v[a:b] for k, v in attributes.items()}},
                                        extra={"area": area_o[a:b], "coco_bbox": bbox_o[a:b]}),
               id=img_id)
        for (img_id, p, w, h), a, b in zip(rows, starts[:-1], starts[1:], strict=True)
    ]
    meta: dict[str, Any] = {"format": "coco", "coco_category_ids": (
        [cat_ids[names_by_id.index(c)] if c in names_by_id else None for c in class_names])}
    meta.update(kept)
    if split is not None:
        meta["split"] = split
        for s in samples:
            s.meta["split"] = split
    return Dataset(samples, class_names, meta)


def _image_rows_fast(images: list, root: str, index: FileIndex, ctx: ReadContext
                     ) -> list[tuple[Any, str, int, int]] | None:
    """All image rows when every one is plainly valid; None sends them to the checking path."""
    try:
        ids = [im["id"] for im in images]
        ws = [im["width"] for im in images]
        hs = [im["height"] for im in images]
        names = [im["file_name"] for im in images]
    except (KeyError, TypeError):
        return None
    if not (all(type(v) is int for v in ids) and all(type(v) is int for v in ws)
            and all(type(v) is int for v in hs) and all(type(v) is str for v in names)):
        return None
    if len(set(ids)) != len(ids) or (images and (min(ws) <= 0 or min(hs) <= 0)):
        return None
    try:
        paths = [read_join_str(root, nm, "") for nm in names]
    except DatasetError:
        return None
    if ctx.check_images and not all(index.exists(p) for p in paths):
        return None
    return list(zip(ids, paths, ws, hs, strict=True))


def _image_row(im: Any, i: int, src: str, root: str, index: FileIndex, ctx: ReadContext,
               id_to_row: dict[Any, int], row: int) -> tuple[Any, str, int, int]:
    if not isinstance(im, dict):
        raise DatasetError(f"{src}: {_where('images', i)}: expected an object")
    img_id = im.get("id")
    if not isinstance(img_id, (int, str)) or isinstance(img_id, bool):
        raise DatasetError(f"{src}: {_where('images', i, 'id')}: expected an integer id, "
                           f"got {img_id!r}")
    if img_id in id_to_row:
        raise DatasetError(f"{src}: {_where('images', i, 'id')}: duplicate image id {img_id!r}")
    w, h = im.get("width"), im.get("height")
    if not (isinstance(w, int) and isinstance(h, int)) or isinstance(w, bool) or isinstance(
            h, bool):
        raise DatasetError(f"{src}: {_where('images', i)}: expected integer width and height, "
                           f"got {w!r} x {h!r}")
    if w <= 0 or h <= 0:
        raise DatasetError(f"{src}: {_where('images', i)}: expected a positive size, "
                           f"got {w} x {h}")
    p = read_join_str(root, im.get("file_name"), f"{src}: {_where('images', i, 'file_name')}")
    if ctx.check_images and not index.exists(p) and not os.path.isfile(p):
        raise DatasetError(f"{src}: {_where('images', i, 'file_name')}: image file {p} "
                           "not found", hint="point --image-dir at the folder that holds the "
                           "images; data stats, eval and convert --images none read the "
                           "annotations alone")
    id_to_row[img_id] = row
    return img_id, str(p), w, h


def _slow_annotations(anns: list, src: str, id_to_row: dict, cat_to_label: dict,
                      wh_rows: np.ndarray, ctx: ReadContext):  # noqa: ANN202
    rows, labels, boxes, crowd, area, kept = [], [], [], [], [], []
    for i, a in enumerate(anns):
        loc = f"{src}: {_where('annotations', i)}"
        if not isinstance(a, dict):
            ctx.fail(f"{loc}: expected an object")
            continue
        if a.get("image_id") not in id_to_row if _hashable(a.get("image_id")) else True:
            ctx.fail(f"{loc}.image_id: unknown image id {a.get('image_id')!r}")
            continue
        if not _hashable(a.get("category_id")) or a.get("category_id") not in cat_to_label:
            ctx.fail(f"{loc}.category_id: unknown category id {a.get('category_id')!r}")
            continue
        b = a.get("bbox")
        if not (isinstance(b, list) and len(b) == 4 and all(_is_num(v) for v in b)):
            ctx.fail(f"{loc}.bbox: expected 4 numbers (x, y, width, height), got {b!r}"[:300])
            continue
        x, y, w, h = (float(v) for v in b)
        if w < 0 or h < 0:
            ctx.fail(f"{loc}.bbox: negative width or height {b!r}")
            continue
        r = id_to_row[a["image_id"]]
        box = np.array([[x, y, x + w, y + h]])
        bad, reason = box_problems(box, wh_rows[r:r + 1], tol=1.0)
        if len(bad):
            W, H = wh_rows[r]
            ctx.fail(f"{loc}.bbox: {REASONS[reason[0]]} (bbox {b!r}, image {W:g}x{H:g})")
            continue
        c = a.get("iscrowd", 0)
        if c not in (0, 1) or isinstance(c, float):
            ctx.fail(f"{loc}.iscrowd: expected 0 or 1, got {c!r}")
            continue
        ar = a.get("area")
        if ar is not None and not _is_num(ar):
            ctx.fail(f"{loc}.area: expected a number, got {ar!r}")
            continue
        rows.append(r)
        kept.append(i)
        labels.append(cat_to_label[a["category_id"]])
        boxes.append([x, y, w, h])
        crowd.append(int(c))
        area.append(w * h if ar is None else float(ar))
    return (np.asarray(rows, np.int64), np.asarray(labels, np.int64),
            np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(crowd, np.int64),
            np.asarray(area, np.float64), kept)


def _attribute_flags(anns: list, kept: Sequence[int], ctx: ReadContext) -> dict[str, np.ndarray]:
    """The true/false entries of the annotations' ``attributes`` objects (CVAT's COCO export,
    danlu's writer) as per-box flags, False where an annotation lacks one; other attribute
    values are not kept and are counted in a notice."""
    if not any(isinstance(a, dict) and "attributes" in a for a in anns):
        return {}
    flags: dict[str, np.ndarray] = {}
    other: dict[str, int] = {}
    for j, i in enumerate(kept):
        attrs = anns[i].get("attributes")
        if not isinstance(attrs, dict):
            continue
        for k, v in attrs.items():
            if isinstance(v, bool) and k != "iscrowd":
                if k not in flags:
                    flags[k] = np.zeros(len(kept), bool)
                flags[k][j] = v
            else:
                other[k] = other.get(k, 0) + 1
    if other:
        said = ", ".join(f"{k!r} on {c}" for k, c in sorted(other.items()))
        ctx.notices.append(f"annotation attributes that are not true/false are not kept: {said}")
    return flags


def _hashable(v: Any) -> bool:
    return isinstance(v, (int, str, float)) and not isinstance(v, bool)


__all__ = ["read_coco", "write_coco", "is_coco", "to_coco_dict", "coco_json_bytes",
           "to_results_list", "category_ids", "image_ids", "load_json"]
