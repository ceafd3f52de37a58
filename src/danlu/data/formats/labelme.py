"""LabelMe JSON: one file per image, usually beside the image.

Layout: ``ROOT/<stem>.json`` per image (read flat, in name order; with ``split``, those of
``ROOT/<split>/``), the images, and optionally ``labels.txt`` or ``classes.txt`` (class names,
one per line). A file, as LabelMe 5 writes it::

    {"version": "5.5.0", "flags": {}, "shapes": [{"label": "cat", "points": [[x1, y1],
     [x2, y2]], "group_id": null, "description": "", "shape_type": "rectangle", "flags": {}}],
     "imagePath": "a.jpg", "imageData": null, "imageHeight": 48, "imageWidth": 64}

Points are continuous pixel coordinates, as danlu's boxes (no +1). Shapes read:

* ``rectangle``: two opposite corners in any order (or four, as X-AnyLabeling writes);
  the box is the ``min`` / ``max`` of the points.
* ``polygon`` of 4 points, ``oriented_rectangle`` (LabelMe 6), ``rotation`` (X-AnyLabeling):
  an oriented box, its points as written in ``Detections.polygons``. When any file holds
  one, every box of the dataset has a polygon (a rectangle's: (x1,y1) (x2,y1) (x2,y2)
  (x1,y2)), else ``polygons`` is None. As in DOTA, it may stick out of the image.
* other ``polygon`` (3 points or more): its enclosing box, counted in a notice.
* ``circle``, ``line``, ``point``, ``linestrip``, ``points``, ``mask`` and unknown kinds are
  not boxes: not read, a notice per kind counts them. No ``shape_type`` is ``polygon``.
* shape ``flags`` (``{"difficult": true}``) are per-box flags (False where a shape lacks
  one); ``group_id`` and ``description``, when any shape has one, are kept in
  ``Detections.extra`` (``group_id`` int64, -1 for null); the file's own ``flags`` in
  ``Sample.meta["image_flags"]``.

Class names: ``class_names``, else ``labels.txt`` / ``classes.txt`` (as ``labelme --labels``
takes it: ``__ignore__`` and ``_background_`` are not classes), else the labels found, sorted.

The image of ``a.json``: the file ``imagePath`` names (relative to the JSON file, ``\\`` read
as ``/``), else that name's last part beside the JSON file, else ``a.<image extension>``
beside it, else the embedded ``imageData`` (``Sample.image`` is then its bytes; LabelMe
prefers ``imageData``, danlu the file). ``Sample.meta["image_found_by"]`` names the rule
(``imagePath``, ``imagePath name``, ``json stem``, ``imageData``), ``Dataset.meta
["image_lookup"]`` counts them, and notices count those not found by ``imagePath``. A
``.json`` file with neither ``shapes`` nor ``imagePath`` is not LabelMe's: left out, noticed.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "labelme"
    >>> det = Detections(np.array([[4, 6, 20, 16.5]]), np.array([0]))
    >>> write_labelme(Dataset([Sample(None, 64, 48, det, id="a")], ["cat"]), root,
    ...               images="none")
    >>> shape = orjson.loads((root / "a.json").read_bytes())["shapes"][0]
    >>> shape["shape_type"], shape["points"]
    ('rectangle', [[4.0, 6.0], [20.0, 16.5]])
"""

from __future__ import annotations

import base64
import binascii
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any, NamedTuple

import numpy as np
import orjson

from danlu.data.formats._common import (
    REASONS,
    FileIndex,
    ReadContext,
    image_names,
    place_image,
    read_join_str,
)
from danlu.data.formats.coco import load_json
from danlu.data.imagesize import image_format, image_size, image_size_from_bytes
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample

#: the ``version`` written into each file (the LabelMe release whose layout it follows)
VERSION = "5.5.0"
ORIENTED = ("oriented_rectangle", "rotation")
#: lines of a LabelMe ``labels.txt`` that name no class
RESERVED_LABELS = ("__ignore__", "_background_")
_CORNERS = ((0, 1), (2, 1), (2, 3), (0, 3))  # a rectangle's polygon: indices into xyxy
_HINT = ('a LabelMe file is {"shapes": [{"label": ..., "points": [[x, y], ...], '
         '"shape_type": ...}], "imagePath": ..., "imageHeight": ..., "imageWidth": ...}')


def _json_names(folder: Path) -> list[str]:
    """The ``*.json`` file names of ``folder``, sorted (hidden files left out)."""
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if e.name.lower().endswith(".json")
                          and not e.name.startswith(".") and e.is_file())
    except OSError:
        return []


def is_labelme(path: Path) -> bool:
    """True for a folder one of whose first three ``*.json`` files holds ``shapes`` and
    ``imagePath``. A ``.json`` file, or a COCO folder (``annotations.json``,
    ``annotations/``), is never LabelMe."""
    path = Path(path)
    if not path.is_dir() or (path / "annotations.json").exists() \
            or (path / "annotations").is_dir():
        return False
    for name in _json_names(path)[:3]:
        try:
            doc = orjson.loads((path / name).read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue
        if isinstance(doc, dict) and "shapes" in doc and "imagePath" in doc:
            return True
    return False


# -- reading ------------------------------------------------------------------------------
class _Box(NamedTuple):
    xyxy: list[float]
    poly: list[tuple[float, float]] | None  # oriented boxes only
    name: str
    loc: str  # "shapes[k]"
    flags: dict[str, bool]
    group_id: int  # -1: null
    description: str


@dataclass
class _File:
    """One LabelMe file as parsed: its image and boxes, and what was not read."""

    image: Any
    width: int
    height: int
    stem: str
    source: str
    meta: dict[str, Any]
    boxes: list[_Box] = field(default_factory=list)
    not_boxes: Counter = field(default_factory=Counter)  # shape kinds not read, counted
    enclosed: int = 0  # polygons read as their enclosing boxes


def _show(value: Any) -> str:
    """A value read from JSON as a message quotes it: JSON, and short."""
    try:
        text = orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        text = f"a deeply nested {type(value).__name__}"
    return text if len(text) <= 60 else text[:57] + "..."


def _fail_item(ctx: ReadContext, message: str) -> None:
    """A bad item inside a file: raised (the file's reader adds the skip hint) or, with
    ``skip_invalid``, recorded and skipped."""
    if not ctx.skip_invalid:
        raise DatasetError(message)
    ctx.fail(message)


def _points(value: Any, where: str) -> list[tuple[float, float]]:
    if not isinstance(value, list) or not value:
        got = "nothing" if value is None else _show(value)
        raise DatasetError(f"{where}.points: expected a list of [x, y] points, got {got}",
                           hint=_HINT)
    for j, p in enumerate(value):  # (finite: orjson reads no inf or nan)
        if not (type(p) is list and len(p) == 2
                and all(type(v) in (int, float) and abs(v) < 1e9 for v in p)):
            raise DatasetError(f"{where}.points[{j}]: expected [x, y] pixel coordinates, got "
                               f"{_show(p)}")
    return [(float(x), float(y)) for x, y in value]


def _flags(value: Any, where: str) -> dict[str, bool]:
    """The flags object at ``where`` (``"a.json: shapes[2].flags"``): true/false (or 0/1)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DatasetError(f"{where}: expected an object of true/false flags, got "
                           f"{_show(value)}")
    for key, v in value.items():
        if not (type(v) is bool or (type(v) is int and v in (0, 1))):
            raise DatasetError(f"{where}.{key}: expected true or false, got {_show(v)}")
    return {k: bool(v) for k, v in value.items()}


def _shape(f: _File, k: int, shape: Any) -> None:
    """Add shape ``k`` of file ``f`` (or count it as not a box)."""
    where = f"{f.source}: shapes[{k}]"
    if not isinstance(shape, dict):
        raise DatasetError(f"{where}: expected an object with label and points, got "
                           f"{_show(shape)}", hint=_HINT)
    kind = shape.get("shape_type")
    kind = "polygon" if kind is None else kind
    if not isinstance(kind, str):
        raise DatasetError(f'{where}.shape_type: expected a string such as "rectangle", '
                           f"got {_show(kind)}")
    if kind not in ("rectangle", "polygon", *ORIENTED):
        f.not_boxes[kind[:40]] += 1
        return
    label = shape.get("label")
    if not isinstance(label, str) or not label:
        raise DatasetError(f"{where}.label: expected a class name, got {_show(label)}")
    xy = _points(shape.get("points"), where)
    n = len(xy)
    if kind == "rectangle" and n not in (2, 4):
        raise DatasetError(f"{where}.points: a rectangle is 2 corners [[x1, y1], [x2, y2]], "
                           f"got {n} points")
    if kind in ORIENTED and n != 4:
        raise DatasetError(f"{where}.points: an {kind} is 4 corners, got {n} points")
    if kind == "polygon" and n < 3:
        raise DatasetError(f"{where}.points: a polygon has at least 3 points, got {n}")
    flags = _flags(shape.get("flags"), f"{where}.flags")
    gid = shape.get("group_id")
    if gid is not None and (type(gid) is not int or not -2**63 <= gid < 2**63):
        raise DatasetError(f"{where}.group_id: expected an integer or null, got {_show(gid)}")
    desc = shape.get("description")
    if desc is not None and not isinstance(desc, str):
        raise DatasetError(f"{where}.description: expected a string, got {_show(desc)}")
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    f.enclosed += kind == "polygon" and n != 4
    f.boxes.append(_Box([min(xs), min(ys), max(xs), max(ys)],
                        xy if kind != "rectangle" and n == 4 else None, label, f"shapes[{k}]",
                        flags, -1 if gid is None else gid, desc or ""))


def _image_data(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise DatasetError(f"{where}: imageData: expected base64 text or null, got "
                           f"{_show(value)}")
    try:
        data = base64.b64decode(value)
    except (binascii.Error, ValueError) as e:
        raise DatasetError(f"{where}: imageData: not valid base64 ({e})") from e
    if image_format(data[:16]) is None:
        raise DatasetError(f"{where}: imageData: not an encoded image (JPEG, PNG ...)")
    return data


def _find_image(folder: str, stem: str, doc: dict, where: str, images: FileIndex,
                ctx: ReadContext) -> tuple[Any, str | None]:
    """The image of a file and the rule that found it (None: not found, not checked)."""
    name = doc.get("imagePath")
    if name is not None and not isinstance(name, str):
        raise DatasetError(f"{where}: imagePath: expected a file name or null, got "
                           f"{_show(name)}")
    named = read_join_str(folder, name, f"{where}: imagePath") if name else None
    if named is not None:
        if images.exists(named):
            return named, "imagePath"
        base = PureWindowsPath(name).name  # the last part, by "/" or "\"
        beside = os.path.join(folder, base)
        if base not in ("", ".", "..") and beside != named and images.exists(beside):
            return beside, "imagePath name"
    found = images.find_image(folder, stem)
    if found is not None:
        return found, "json stem"
    if doc.get("imageData") is not None:
        return _image_data(doc["imageData"], where), "imageData"
    if ctx.check_images:
        tried = f"image file {named} not found" if named else "no imagePath"
        raise DatasetError(f"{where}: {tried}, nor an image {stem}.* beside the JSON file, "
                           "and no imageData",
                           hint="name the image in imagePath, relative to the JSON file")
    return named or os.path.join(folder, stem + ".jpg"), None


def _size(doc: dict, image: Any, where: str, images: FileIndex) -> tuple[int, int]:
    size = []
    for key in ("imageWidth", "imageHeight"):
        v = doc.get(key)
        v = int(v) if type(v) is float and v.is_integer() else v
        if v is not None and (type(v) is not int or v < 0):
            raise DatasetError(f"{where}: {key}: expected a positive integer, got {_show(v)}")
        size.append(v or 0)
    if size[0] and size[1]:
        return size[0], size[1]
    if isinstance(image, bytes):  # LabelMe too measures the image when these are missing
        return image_size_from_bytes(image)
    if images.exists(image):
        return image_size(image)
    raise DatasetError(f"{where}: imageWidth/imageHeight missing, and no image to measure")


def _check_boxes(f: _File, ctx: ReadContext) -> None:
    """Boxes outside the image (by more than 1 px; oriented ones wholly outside) fail."""
    w, h = f.width, f.height
    kept = []
    for box in f.boxes:
        x1, y1, x2, y2 = box.xyxy
        if box.poly is not None:
            bad = x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h
        else:
            bad = x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1
        if bad:
            what = "box lies entirely outside the image" if box.poly else REASONS[2]
            coords = ", ".join(f"{v:g}" for v in box.xyxy)
            _fail_item(ctx, f"{f.source}: {box.loc}: {what} (box xyxy [{coords}], "
                            f"image {w}x{h})")
        else:
            kept.append(box)
    f.boxes = kept


def _read_file(folder: Path, name: str, images: FileIndex, ctx: ReadContext) -> _File | None:
    """One LabelMe file (None: a JSON file that is not LabelMe's)."""
    where = str(folder / name)
    doc = load_json(folder / name)
    if isinstance(doc, dict) and "shapes" not in doc and "imagePath" not in doc:
        return None
    if not isinstance(doc, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(doc).__name__}",
                           hint=_HINT)
    shapes = doc.get("shapes")
    if not isinstance(shapes, list):
        raise DatasetError(f"{where}: shapes: expected a list of shapes, got {_show(shapes)}",
                           hint=_HINT)
    stem = name[:-5]
    image, found_by = _find_image(str(folder), stem, doc, where, images, ctx)
    width, height = _size(doc, image, where, images)
    meta: dict[str, Any] = {"image_found_by": found_by} if found_by else {}
    if image_flags := _flags(doc.get("flags"), f"{where}: flags"):
        meta["image_flags"] = image_flags
    f = _File(image, width, height, stem, where, meta)
    for k, shape in enumerate(shapes):
        try:
            _shape(f, k, shape)
        except DatasetError as e:
            _fail_item(ctx, e.message)
    _check_boxes(f, ctx)
    return f


def _class_file(folders: list[Path]) -> list[str] | None:
    for p in (folder / name for folder in folders for name in ("labels.txt", "classes.txt")):
        if p.is_file():
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise DatasetError(f"{p}: cannot read as UTF-8 text ({e})") from e
            return [n for n in map(str.strip, text.splitlines())
                    if n and n not in RESERVED_LABELS] or None
    return None


def read_labelme(path: Path, ctx: ReadContext) -> Dataset:
    """Read a folder of LabelMe JSON files (see the module docstring for the conventions).

    Raises:
        DatasetError: no LabelMe file in the folder; a malformed file, naming the file and
            the line and column (bad JSON) or the JSON path (``shapes[2].points``); an image
            not found (with ``check_images``); a box outside its image; a label outside
            ``class_names`` or the class file. With ``skip_invalid`` a bad shape is skipped
            (a whole file when the fault is outside its shapes), each in ``ctx.warnings``.
    """
    path = folder = Path(path)
    if ctx.split:
        folder = path / ctx.split
        if "/" in ctx.split or "\\" in ctx.split or ctx.split in (".", "..") \
                or not folder.is_dir():
            raise DatasetError(f"{path}: split {ctx.split!r} not found (LabelMe splits are "
                               "sub-folders of JSON files)")
    names = _json_names(folder)
    class_names = (list(ctx.class_names) if ctx.class_names is not None
                   else _class_file(list(dict.fromkeys([folder, path]))))
    images = FileIndex()
    files: list[_File] = []
    foreign = []
    for name in ctx.progress(names, "reading LabelMe", len(names)):
        try:
            f = _read_file(folder, name, images, ctx)
        except DatasetError as e:
            ctx.fail(e.message, e.hint)
            continue
        if f is None:
            foreign.append(name)
        else:
            files.append(f)
    if not files and not (ctx.skip_invalid and ctx.warnings):
        raise DatasetError(f"{folder}: no LabelMe .json files"
                           + (f" ({len(foreign)} other .json files)" if foreign else ""),
                           hint=f"{_HINT}; files in sub-folders are read with --split NAME")
    _notices(files, foreign, ctx)
    samples, class_names = _samples(files, class_names, ctx)
    lookup = Counter(s.meta.get("image_found_by") or "unchecked" for s in samples)
    meta: dict[str, Any] = {"format": "labelme", "image_lookup": dict(lookup)}
    if ctx.split:
        meta["split"] = ctx.split
        for s in samples:
            s.meta["split"] = ctx.split
    return Dataset(samples, class_names, meta)


_FOUND_BY = {"imagePath name": "by imagePath's last part beside the JSON file, not by imagePath",
             "json stem": "by the JSON file's name (<stem>.*), not by imagePath",
             "imageData": "nowhere on disk: read from the embedded imageData"}


def _notices(files: list[_File], foreign: list[str], ctx: ReadContext) -> None:
    if enclosed := sum(f.enclosed for f in files):
        ctx.notices.append(f"{enclosed} polygons with other than 4 points read as their "
                           "enclosing boxes")
    tally: Counter = sum((f.not_boxes for f in files), Counter())
    ctx.notices.extend(f"{n} {kind} shapes are not boxes: not read"
                       for kind, n in sorted(tally.items()))
    found = Counter(f.meta.get("image_found_by") for f in files)
    for rule, how in _FOUND_BY.items():
        if found[rule]:
            ctx.notices.append(f"{found[rule]} of {len(files)} images found {how}")
    if foreign:
        ctx.notices.append(f"{len(foreign)} .json files are not LabelMe files (no shapes, no "
                           f"imagePath): not read ({', '.join(foreign[:5])[:200]})")


def _samples(files: list[_File], class_names: list[str] | None, ctx: ReadContext
             ) -> tuple[list[Sample], list[str]]:
    """Samples from parsed files: labels by class name; polygons, flags and extras the same
    across the dataset."""
    if class_names is None:
        class_names = sorted({b.name for f in files for b in f.boxes})
    index = {n: i for i, n in enumerate(class_names)}
    every = [b for f in files for b in f.boxes]
    oriented = any(b.poly is not None for b in every)
    flag_names = sorted({k for b in every for k in b.flags})
    with_gid = any(b.group_id != -1 for b in every)
    with_desc = any(b.description for b in every)
    known = ", ".join(class_names[:20]) + (" ..." if len(class_names) > 20 else "")
    samples = []
    for f in files:
        for b in f.boxes:
            if b.name not in index:
                ctx.fail(f"{f.source}: {b.loc}.label: unknown class name {b.name!r} "
                         f"(known: {known})")
        boxes = [b for b in f.boxes if b.name in index]
        n = len(boxes)
        polygons = None
        if oriented:
            polygons = np.asarray([b.poly or [(b.xyxy[i], b.xyxy[j]) for i, j in _CORNERS]
                                   for b in boxes], np.float32).reshape(n, 4, 2)
        extra: dict[str, np.ndarray] = {}
        if with_gid:
            extra["group_id"] = np.asarray([b.group_id for b in boxes], np.int64).reshape(n)
        if with_desc:
            extra["description"] = np.asarray([b.description for b in boxes], str).reshape(n)
        det = Detections(np.asarray([b.xyxy for b in boxes], np.float32).reshape(n, 4),
                         [index[b.name] for b in boxes], polygons=polygons,
                         flags={k: [b.flags.get(k, False) for b in boxes] for k in flag_names},
                         extra=extra)
        samples.append(Sample(f.image, f.width, f.height, det, id=f.stem, meta=f.meta))
    return samples, list(class_names)


# -- writing ------------------------------------------------------------------------------
def labelme_doc(sample: Sample, image_path: str, class_names: list[str]) -> dict[str, Any]:
    """The LabelMe document of ``sample``: a ``rectangle`` per axis-aligned box, a 4-point
    ``polygon`` per oriented one, flags as shape flags, ``imageData`` null."""
    d = sample.detections
    gids, descs = d.extra.get("group_id"), d.extra.get("description")
    shapes = []
    for i in range(len(d)):
        if d.polygons is not None:
            kind, points = "polygon", d.polygons[i].astype(np.float32)
        else:
            kind, points = "rectangle", d.xyxy[i].astype(np.float32).reshape(2, 2)
        gid = None if gids is None or int(gids[i]) == -1 else int(gids[i])
        shapes.append({"label": class_names[int(d.labels[i])], "points": points,
                       "group_id": gid, "description": "" if descs is None else str(descs[i]),
                       "shape_type": kind, "flags": {k: bool(v[i]) for k, v in d.flags.items()}})
    image_flags = sample.meta.get("image_flags") if isinstance(sample.meta, dict) else None
    return {"version": VERSION, "flags": dict(image_flags or {}), "shapes": shapes,
            "imagePath": image_path, "imageData": None,
            "imageHeight": int(sample.height), "imageWidth": int(sample.width)}


def labelme_json_bytes(sample: Sample, image_path: str, class_names: list[str]) -> bytes:
    """:func:`labelme_doc` as LabelMe writes it: indented by 2, UTF-8, float coordinates
    (float32 values in their shortest form)."""
    return orjson.dumps(labelme_doc(sample, image_path, class_names),
                        option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def write_labelme(ds: Dataset, root: Path, *, images: str = "copy",
                  progress=None) -> None:  # noqa: ANN001 - a progress wrapper
    """Write ``ds`` as a LabelMe folder at ``root`` (which the caller makes atomic): one
    ``<stem>.json`` beside each image (``images``: ``copy``, ``symlink`` or ``none``), and
    ``labels.txt`` (class order). Scores and splits are not written (LabelMe has neither).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = list(zip(ds.samples, image_names(ds), strict=True))
    if progress is not None:
        items = progress(items, "writing LabelMe", len(items))
    for sample, name in items:
        place_image(sample, root / name, images)
        (root / f"{os.path.splitext(name)[0]}.json").write_bytes(
            labelme_json_bytes(sample, name, ds.class_names))
    (root / "labels.txt").write_text("".join(f"{c}\n" for c in ds.class_names),
                                     encoding="utf-8")


__all__ = ["read_labelme", "write_labelme", "is_labelme", "labelme_doc", "labelme_json_bytes",
           "VERSION", "ORIENTED", "RESERVED_LABELS"]
