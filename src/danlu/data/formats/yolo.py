"""YOLO, in the Ultralytics layout.

Layout::

    ROOT/data.yaml          names: [cat, dog] (or {0: cat, 1: dog}); train: images/train ...
    ROOT/images/<split>/<stem>.<ext>
    ROOT/labels/<split>/<stem>.txt      one box per line: ``cls cx cy w h [score]``
                                        or, oriented: ``cls x1 y1 x2 y2 x3 y3 x4 y4 [score]``

Conventions: ``cx cy w h`` are the box center and size divided by the image width and height
(normalized to 0..1); ``cls`` is the 0-based label. An optional 6th column is a confidence
score (predictions). Lines of 9 values are Ultralytics OBB oriented boxes: the 4 corners, each
divided by the image size, read into ``Detections.polygons`` (``xyxy`` the enclosing box, which
may stick out of the image as in DOTA); once one file has them every sample has polygons, and
the dataset's format is ``yolo-obb``. An image without a label file has no boxes (a notice
counts them; none at all is an error). Image sizes are read from the image headers
(:mod:`danlu.data.imagesize`). The label file of an image is found as in Ultralytics: the last
``images`` folder of its path replaced by ``labels``, suffix ``.txt``; else with the other name
of the validation split (``val`` / ``valid``), else beside the image. Roboflow exports
(``train/images``, ``train/labels``, ``valid/``), CVAT / darknet exports (``obj.data``,
``obj.names``, ``train.txt``, ``obj_train_data/``) and LabelImg folders (``classes.txt``,
labels beside the images) are read too: :mod:`danlu.data.formats._yolo_layout` lists the
layouts.

``data.yaml`` keys: ``path`` (the dataset root, relative to the YAML file; default its
folder), ``train`` / ``val`` / ``test`` (a folder of images or a ``.txt`` list of image paths,
or a list of those, relative to ``path``; they must stay inside it), ``names``. Without a YAML
file, ``ROOT/images/<split>/`` folders (or ``ROOT/images/`` itself) are read and the class
names come from ``classes.txt`` when present. Each sample's ``meta["split"]`` is its split;
``split="val"`` also selects a split named ``valid`` or ``validation``.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "yolo"
    >>> det = Detections(np.array([[0, 0, 32, 24]]), np.array([1]))
    >>> write_yolo(Dataset([Sample(None, 64, 48, det, id="a")], ["cat", "dog"]), root,
    ...            images="none")
    >>> (root / "labels" / "train" / "a.txt").read_text()
    '1 0.250000 0.250000 0.500000 0.500000\\n'
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from danlu.data.formats._common import (
    RawImage,
    ReadContext,
    assemble,
    image_names,
    place_image,
)
from danlu.data.formats._yolo_layout import (
    LabelFinder,
    find_items,
    find_yaml,
    is_yolo_folder,
)
from danlu.data.imagesize import image_size
from danlu.errors import DatasetError
from danlu.structures import Dataset, Sample


def is_yolo(path: Path) -> bool:
    """True for a YOLO dataset YAML, or a folder in one of the layouts
    :mod:`danlu.data.formats._yolo_layout` reads (``images/`` + ``labels/``, Roboflow's
    ``train/images``, CVAT's ``obj.data``, LabelImg's ``classes.txt`` beside the images)."""
    return find_yaml(path) is not None or is_yolo_folder(path)


# values per line: a box (5), a box and a score (6), an oriented box (9), and a score (10)
_NCOLS = (5, 6, 9, 10)


def _parse_labels(path: Path, data: bytes, w: int, h: int, raw: RawImage, *,
                  num_classes: int | None = None) -> None:
    """Fill ``raw`` from a label file's bytes (errors raise DatasetError naming the file and
    the line). With ``num_classes``, a class index outside ``0..num_classes-1`` is such an
    error too (readers that check classes later leave it None)."""
    lines = data.splitlines()
    rows = [ln for ln in lines if ln.strip()]
    tokens = data.split()
    ncol = len(tokens) // len(rows) if rows else 5
    if not rows:
        arr = np.zeros((0, 5))
    elif ncol in _NCOLS and len(tokens) == ncol * len(rows) and len(rows) == len(lines) and all(
            len(r.split()) == ncol for r in rows[:1]):
        try:
            arr = np.array(list(map(float, tokens)), np.float64).reshape(len(rows), ncol)
        except ValueError:
            arr = None
    else:
        arr = None
    if arr is None or (len(rows) and not np.isfinite(arr).all()):
        arr = _slow_rows(path, lines, raw)
        ncol = arr.shape[1]
    cls = arr[:, 0]
    if (cls != np.round(cls)).any() or (np.abs(cls) > 2**31).any():
        k = int(np.flatnonzero((cls != np.round(cls)) | (np.abs(cls) > 2**31))[0])
        raise DatasetError(f"{path}: {_line_of(raw, k)}: expected an integer class index, "
                           f"got {cls[k]!r}")
    if num_classes is not None:
        out = np.flatnonzero((cls < 0) | (cls >= num_classes))
        if len(out):
            k = int(out[0])
            raise DatasetError(f"{path}: {_line_of(raw, k)}: class index {int(cls[k])} outside "
                               f"0..{num_classes - 1}")
    if w <= 0 or h <= 0:
        raise DatasetError(f"{path}: the image has no size ({w} x {h}), so its normalized boxes "
                           "cannot be placed")
    raw.names = cls.astype(np.int64)
    if ncol in (9, 10):  # Ultralytics OBB: cls x1 y1 x2 y2 x3 y3 x4 y4 [score]
        quad = arr[:, 1:9].reshape(-1, 4, 2) * np.array([w, h], np.float64)
        raw.polygons = quad
        raw.boxes = np.concatenate([quad.min(axis=1), quad.max(axis=1)], axis=1)
        if ncol == 10:
            raw.scores = arr[:, 9].astype(np.float32)
        return
    neg = np.flatnonzero((arr[:, 3] < 0) | (arr[:, 4] < 0))
    if len(neg):
        k = int(neg[0])
        raise DatasetError(f"{path}: {_line_of(raw, k)}: negative box width or height "
                           f"({arr[k, 3]:g}, {arr[k, 4]:g})")
    from danlu.boxes.convert import from_yolo

    raw.boxes = from_yolo(arr[:, 1:5], w, h)
    if ncol == 6:
        raw.scores = arr[:, 5].astype(np.float32)


def _line_of(raw: RawImage, k: int) -> str:
    return raw.lines[k] if k < len(raw.lines) else f"line {k + 1}"


def _slow_rows(path: Path, lines: list[bytes], raw: RawImage) -> np.ndarray:
    rows, where = [], []
    ncol = None
    for i, ln in enumerate(lines, 1):
        parts = ln.split()
        if not parts:
            continue
        if len(parts) not in _NCOLS:
            raise DatasetError(f"{path}: line {i}: expected 5 values 'class cx cy w h' or 9 "
                               "'class x1 y1 ... x4 y4' (oriented, Ultralytics OBB), and "
                               f"optionally a score after them; got {len(parts)}")
        if ncol is not None and len(parts) != ncol:
            raise DatasetError(f"{path}: line {i}: {len(parts)} values where earlier lines "
                               f"have {ncol}")
        ncol = len(parts)
        try:
            vals = [float(p) for p in parts]
        except ValueError as e:
            raise DatasetError(f"{path}: line {i}: expected numbers, got "
                               f"{ln.decode('utf-8', 'replace')[:80]!r}") from e
        if not all(np.isfinite(vals)):
            raise DatasetError(f"{path}: line {i}: values must be finite numbers")
        rows.append(vals)
        where.append(f"line {i}")
    raw.lines = where
    return np.asarray(rows, np.float64).reshape(-1, ncol or 5)


def read_yolo(path: Path, ctx: ReadContext) -> Dataset:
    """Read a YOLO dataset (see the module docstring for the layouts and conventions).

    Images without a label file have no boxes and are counted in a notice
    (``Dataset.meta["notices"]``) naming the folders looked in; when no image has one, it is
    an error: a labelled dataset with no label file at all is a layout danlu did not find
    (empty label files are fine: background images).
    """
    path = Path(path)
    items, names, base = find_items(path, ctx)
    if ctx.class_names is not None:
        names = list(ctx.class_names)
    raws = []
    finder = LabelFinder(base)
    for split, img in ctx.progress(items, "reading YOLO", len(items)):
        lab = finder.find(img)
        try:
            if ctx.sizes is not None and img.stem in ctx.sizes:
                w, h = ctx.sizes[img.stem]
            else:
                w, h = image_size(img)
            raw = RawImage(str(img), w, h, img.stem, lab or str(img),
                           meta={"split": split} if split else {})
            if lab is not None:
                try:
                    with open(lab, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise DatasetError(f"{lab}: cannot read ({e.strerror or e})") from e
                _parse_labels(Path(lab), data, w, h, raw)
            raws.append(raw)
        except DatasetError as e:
            ctx.fail(e.message, e.hint)
    if finder.missing and ctx.sizes is None:  # (predictions: an image may have none)
        said = finder.report(len(items), base)
        if len(finder.missing) == len(items):
            raise DatasetError(f"{path}: {said}",
                               hint="put each image's labels in labels/<split>/<stem>.txt "
                                    "(images in images/<split>/) or <stem>.txt beside it; "
                                    "an image without boxes needs an empty .txt")
        ctx.notices.append(said)
    with_scores = [r.scores is not None for r in raws if len(r.boxes)]
    if any(with_scores):
        for r in raws:
            if r.scores is None:
                if len(r.boxes):
                    ctx.fail(f"{r.source}: has no score column where other files have one")
                    r.boxes, r.names = np.zeros((0, 4)), np.zeros(0, np.int64)
                r.scores = np.zeros(len(r.boxes), np.float32)
    else:
        for r in raws:
            r.scores = None
    oriented = any(r.polygons is not None for r in raws)
    if oriented:  # every sample has polygons once one file is oriented (a box: its corners)
        from danlu.boxes.convert import xyxy_to_polygon

        for r in raws:
            if r.polygons is None:
                r.polygons = xyxy_to_polygon(np.asarray(r.boxes, np.float64).reshape(-1, 4))
    # an oriented box may stick out of its image, as in DOTA
    samples, class_names = assemble(raws, names, ctx, tol=float("inf") if oriented else 1.0,
                                    names_are_indices=True)
    return Dataset(samples, class_names, {"format": "yolo-obb" if oriented else "yolo"})


def _label_text(sample: Sample, oriented: bool = False) -> str:
    """One line per box, 6 decimals: ``cls cx cy w h`` or, ``oriented``, ``cls x1 y1 .. x4 y4``
    (the polygon's corners, or an axis-aligned box's from its top left, clockwise), then the
    score when the sample has scores."""
    d = sample.detections
    if not len(d):
        return ""
    w, h = float(sample.width), float(sample.height)
    from danlu.boxes.convert import to_yolo, xyxy_to_polygon

    if w <= 0 or h <= 0:
        raise DatasetError(f"{sample.image}: YOLO labels need the image size, got {w:g} x {h:g}",
                           hint="read the dataset with its images so their sizes are known")
    if oriented:
        quad = (d.polygons.astype(np.float64).reshape(-1, 4, 2) if d.polygons is not None
                else xyxy_to_polygon(d.xyxy.astype(np.float64)))
        cols = (quad / np.array([w, h])).reshape(-1, 8)
    else:
        cols = to_yolo(d.xyxy.astype(np.float64), w, h)
    if d.scores is not None:
        cols = np.concatenate([cols, d.scores.astype(np.float64)[:, None]], axis=1)
    labels = d.labels.tolist()
    return "".join(f"{labels[i]} " + " ".join(f"{v:.6f}" for v in row) + "\n"
                   for i, row in enumerate(cols.tolist()))


def write_yolo(ds: Dataset, root: Path, *, images: str = "copy", progress=None,  # noqa: ANN001
               oriented: bool = False) -> None:
    """Write ``ds`` as a YOLO folder at ``root`` (made atomic by the caller).

    Samples go to the split in their ``meta["split"]`` (default ``train``). ``data.yaml``
    lists every split written; ``val`` falls back to ``train`` when there is none, as
    Ultralytics needs one. ``oriented`` writes Ultralytics OBB lines (polygons kept);
    otherwise a polygon is written as its axis-aligned enclosing box.
    """
    root = Path(root)
    names = image_names(ds)
    splits: list[str] = []
    items = list(zip(ds.samples, names, strict=True))
    if progress is not None:
        items = progress(items, "writing YOLO", len(items))
    for sample, name in items:
        split = str(sample.meta.get("split") or "train") if isinstance(sample.meta, dict) \
            else "train"
        split = split.replace("/", "_").replace("\\", "_") or "train"
        if split not in splits:
            splits.append(split)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        place_image(sample, root / "images" / split / name, images)
        stem = os.path.splitext(name)[0]
        (root / "labels" / split / f"{stem}.txt").write_text(_label_text(sample, oriented),
                                                             encoding="utf-8")
    if not splits:
        splits = ["train"]
        (root / "images" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {}
    for s in splits:
        doc[s] = f"images/{s}"
    if "val" not in doc:
        doc["val"] = doc.get("train", f"images/{splits[0]}")
    if "train" not in doc:
        doc["train"] = f"images/{splits[0]}"
    doc["nc"] = len(ds.class_names)
    doc["names"] = {i: n for i, n in enumerate(ds.class_names)}
    (root / "data.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True),
                                    encoding="utf-8")


def write_yolo_obb(ds: Dataset, root: Path, *, images: str = "copy",
                   progress=None) -> None:  # noqa: ANN001 - a progress wrapper
    """:func:`write_yolo` with Ultralytics OBB labels: ``cls x1 y1 x2 y2 x3 y3 x4 y4``."""
    write_yolo(ds, root, images=images, progress=progress, oriented=True)


def is_yolo_obb(path: Path, probe: int = 20) -> bool:
    """True for a YOLO dataset (:func:`is_yolo`) whose first label line (among the first
    ``probe`` label files found under it) has 9 or 10 values: Ultralytics OBB."""
    if not is_yolo(path):
        return False
    folder = path.parent if path.is_file() else path
    labels = (t for t in folder.rglob("*.txt") if t.name not in _NOT_LABELS)
    for txt in itertools.islice(labels, probe):
        try:
            with open(txt, "rb") as f:
                first = next((ln for ln in f if ln.strip()), b"")
        except OSError:
            continue
        if first:
            return len(first.split()) in (9, 10)
    return False


# text files of the YOLO layouts that are not label files
_NOT_LABELS = frozenset({"classes.txt", "obj.names", "train.txt", "val.txt", "valid.txt",
                         "test.txt", "labels.txt", "README.txt", "README.roboflow.txt"})

__all__ = ["read_yolo", "write_yolo", "write_yolo_obb", "is_yolo", "is_yolo_obb", "find_yaml"]
