"""Read and write datasets in any supported format, and read predictions aligned to ground truth.

Formats (a small registry, :data:`FORMATS`; :func:`register_format` adds one):

==========  ==============================================================================
``voc``     Pascal VOC folder: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main``
``coco``    COCO instances JSON (a ``.json`` file, or a folder with ``annotations.json``)
``yolo``    Ultralytics YOLO: ``data.yaml``, ``images/<split>/``, ``labels/<split>/*.txt``
``dota``    DOTA v1/v1.5/v2: ``images/``, ``labelTxt/*.txt`` (4-point polygons)
==========  ==============================================================================

In memory every reader returns a :class:`~danlu.structures.Dataset` with absolute image paths
and continuous ``xyxy`` pixel boxes; in files, image paths are relative to the dataset folder.
Bad input raises :class:`~danlu.errors.DatasetError` naming the file and the line (text
formats), the element (VOC) or the JSON path (COCO), and what was expected; with
``skip_invalid=True`` the bad items are skipped and described in ``meta["warnings"]``.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> det = Detections(np.array([[4, 4, 20, 16]]), np.array([0]))
    >>> ds = Dataset([Sample(np.zeros((24, 32, 3), np.uint8), 32, 24, det, id="a")], ["cat"])
    >>> out = save_dataset(ds, tmp / "voc", "voc")
    >>> back = load_dataset(tmp / "voc")
    >>> back.meta["format"], back[0].detections.xyxy.tolist()
    ('voc', [[4.0, 4.0, 20.0, 16.0]])
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from danlu.data._atomic import atomic_dir, write_bytes_atomic
from danlu.data.formats import coco, dota, voc, yolo
from danlu.data.formats._common import IMAGE_MODES, Progress, RawImage, ReadContext, no_progress
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample


@dataclass(frozen=True)
class Format:
    """One dataset format: how to recognise, read and write it."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    read: Callable[[Path, ReadContext], Dataset]
    write: Callable[..., None]


FORMATS: dict[str, Format] = {}


def register_format(fmt: Format) -> None:
    """Add (or replace) a format in the registry used by :func:`load_dataset` and friends."""
    FORMATS[fmt.name] = fmt


register_format(Format("voc", "Pascal VOC XML folder", voc.is_voc, voc.read_voc, voc.write_voc))
register_format(Format("dota", "DOTA labelTxt folder", dota.is_dota, dota.read_dota,
                       dota.write_dota))
register_format(Format("coco", "COCO instances JSON", coco.is_coco, coco.read_coco,
                       coco.write_coco))
register_format(Format("yolo", "Ultralytics YOLO folder", yolo.is_yolo, yolo.read_yolo,
                       yolo.write_yolo))

# Exceptions a parser may leak on input nobody anticipated: reported as DatasetError.
_PARSER_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                  UnicodeError, RecursionError, struct.error, MemoryError)


def detect_format(path: str | os.PathLike[str]) -> str:
    """The name of the format of the dataset at ``path``.

    Returns:
        ``"voc"`` (``Annotations/``), ``"dota"`` (``labelTxt/``), ``"coco"`` (a ``.json`` file
        or ``annotations.json`` / ``annotations/*.json``) or ``"yolo"`` (a YAML file with
        ``names``, or ``images/`` + ``labels/``), checked in that order.

    Raises:
        DatasetError: ``path`` does not exist or matches no format.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    for fmt in FORMATS.values():
        if fmt.detect(p):
            return fmt.name
    raise DatasetError(f"{p}: cannot tell the dataset format",
                       hint=f"pass the format explicitly: one of {', '.join(FORMATS)}")


def _format(name: str | None, path: Path) -> Format:
    if name is None:
        name = detect_format(path)
    fmt = FORMATS.get(name.lower())
    if fmt is None:
        raise DatasetError(f"unknown dataset format {name!r}",
                           hint=f"one of {', '.join(FORMATS)}")
    return fmt


def load_dataset(path: str | os.PathLike[str], format: str | None = None, *,
                 split: str | None = None, skip_invalid: bool = False,
                 class_names: Sequence[str] | str | None = None, check_images: bool = True,
                 progress: Progress | None = None) -> Dataset:
    """Read a dataset from disk.

    Args:
        path: the dataset folder or file (see the format table in the module docstring).
        format: ``"voc"``, ``"coco"``, ``"yolo"`` or ``"dota"``; None detects it.
        split: VOC ``ImageSets/Main/<split>.txt``, a YOLO ``data.yaml`` key, COCO
            ``annotations/instances_<split>.json``; None reads everything.
        skip_invalid: skip bad boxes, files and images instead of raising; each skip is
            described in ``meta["warnings"]``.
        class_names: the expected classes, in label order; a name outside them is an error.
            DOTA also takes ``"dota-v1.0"``, ``"dota-v1.5"``, ``"dota-v2.0"``.
        check_images: require the image files to exist (formats that store sizes only).
        progress: wraps the file iteration, ``progress(items, description, total)``.

    Returns:
        A :class:`Dataset` with absolute image paths, continuous ``xyxy`` boxes, and
        ``meta["format"]`` and ``meta["warnings"]`` (a list of strings).

    Raises:
        DatasetError: missing or malformed input, naming the file and where in it.

    Example:
        >>> load_dataset("no/such/folder")
        Traceback (most recent call last):
        ...
        danlu.errors.DatasetError: no/such/folder: no such file or folder
    """
    p = Path(path)
    fmt = _format(format, p)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    names = class_names if (isinstance(class_names, str) and fmt.name == "dota") else (
        None if class_names is None else [str(c) for c in class_names])
    if isinstance(class_names, str) and fmt.name != "dota":
        raise DatasetError(f"class_names={class_names!r}: expected a list of names")
    ctx = ReadContext(skip_invalid=skip_invalid, check_images=check_images, split=split,
                      class_names=names, progress=progress or no_progress)  # type: ignore[arg-type]
    try:
        ds = fmt.read(p.absolute(), ctx)
    except DatasetError:
        raise
    except _PARSER_ERRORS as e:
        raise DatasetError(f"{p}: malformed {fmt.name} dataset ({type(e).__name__}: {e})"[:500]) \
            from e
    ds.meta["warnings"] = ctx.warnings
    return ds


def save_dataset(ds: Dataset, path: str | os.PathLike[str], format: str, *,
                 images: str = "copy", overwrite: bool = False,
                 progress: Progress | None = None) -> Path:
    """Write ``ds`` to ``path`` in ``format``; nothing is half-written if it fails.

    The dataset is written into a temporary sibling folder and renamed into place at the end.
    For ``coco`` a ``path`` ending in ``.json`` writes that one file (atomically) and no images:
    file names are relative to its folder when the images lie under it, else base names.

    Args:
        ds: the dataset.
        path: the output folder (or ``.json`` file for COCO).
        format: ``"voc"``, ``"coco"``, ``"yolo"`` or ``"dota"``.
        images: ``"copy"`` the image files (or write their bytes / encode their arrays as
            PNG), ``"symlink"`` to them, or ``"none"`` (annotations only).
        overwrite: replace an existing non-empty output folder.
        progress: wraps the sample iteration, ``progress(items, description, total)``.

    Returns:
        The path written.
    """
    p = Path(path)
    fmt = FORMATS.get(format.lower()) if isinstance(format, str) else None
    if fmt is None:
        raise DatasetError(f"unknown dataset format {format!r}",
                           hint=f"one of {', '.join(FORMATS)}")
    if images not in IMAGE_MODES:
        raise DatasetError(f"images={images!r}: expected one of {', '.join(IMAGE_MODES)}")
    for i, s in enumerate(ds.samples):
        if len(s.detections) and (s.detections.labels.min() < 0
                                  or s.detections.labels.max() >= len(ds.class_names)):
            raise DatasetError(f"sample {i} ({s.id!r}): label outside 0..{len(ds.class_names) - 1}"
                               " (the dataset's class_names)")
    if fmt.name == "coco" and p.suffix.lower() == ".json":
        if p.exists() and not overwrite:
            raise DatasetError(f"{p}: file exists", hint="pass overwrite to replace it")
        write_bytes_atomic(p, coco.coco_json_bytes(ds, p))
        return p
    with atomic_dir(p, overwrite=overwrite) as tmp:
        fmt.write(ds, tmp, images=images, progress=progress)
    return p


# -- predictions ---------------------------------------------------------------------------
def _keys(sample: Sample) -> list[str]:
    keys = [] if sample.id is None else [str(sample.id)]
    if sample.path is not None:
        keys.append(sample.path.stem)
    return keys


def load_predictions(path: str | os.PathLike[str], gt: Dataset, format: str | None = None, *,
                     skip_invalid: bool = False) -> Dataset:
    """Read predictions and align them, sample by sample, to the ground truth ``gt``.

    Accepted inputs (``format`` is detected when None):

    * ``coco-results``: a COCO results JSON list of ``{image_id, category_id, bbox, score}``
      (bbox ``[x, y, w, h]``). ``image_id`` matches a ``gt`` sample's id, file stem, or the
      integer id danlu's COCO writer gives it (:func:`danlu.data.formats.coco.image_ids`);
      ``category_id`` maps through ``gt.meta["coco_category_ids"]`` when present (a gt read
      from COCO), else ids 1..K in ``gt.class_names`` order (what :func:`save_predictions`
      and danlu's COCO writer use).
    * ``danlu-predictions``: the ``predictions.json`` that ``danlu predict`` writes (images
      matched by file stem, classes by name).
    * ``yolo-labels``: a folder of YOLO ``*.txt`` files (``cls cx cy w h score``), one per
      image stem; sizes come from ``gt``.
    * any dataset format danlu writes (``coco``, ``voc``, ``yolo``, ``dota``): read with
      image sizes from ``gt`` where the format needs them, matched by id / stem, classes
      matched by name.

    Returns:
        A :class:`Dataset` with ``gt``'s samples (same order, image, size and id) holding the
        predictions (scores 1.0 where the file has none; an empty ``Detections`` with scores
        where an image has no prediction), ``gt.class_names``, and ``meta["warnings"]``.

    Raises:
        DatasetError: a malformed file, an image id or class name not in ``gt`` (or, with
            ``skip_invalid``, those are skipped and listed in ``meta["warnings"]``).

    Example:
        >>> import numpy as np, tempfile, pathlib
        >>> gt = Dataset([Sample("/data/a.jpg", 64, 48, id=5)], ["cat"])
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "preds.json"
        >>> _ = f.write_text('[{"image_id": 5, "category_id": 1, "bbox": [1, 2, 10, 20], '
        ...                  '"score": 0.9}]')
        >>> p = load_predictions(f, gt)
        >>> p[0].detections.xyxy.tolist(), p[0].detections.scores.tolist()
        ([[1.0, 2.0, 11.0, 22.0]], [0.8999999761581421])
    """
    p = Path(path)
    ctx = ReadContext(skip_invalid=skip_invalid, check_images=False)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if format is None:
        format = _detect_predictions(p)
    try:
        if format == "coco-results":
            per_key = _coco_results(p, gt, ctx)
        elif format == "danlu-predictions":
            per_key = _danlu_predictions(p, gt, ctx)
        elif format == "yolo-labels":
            per_key = _yolo_labels(p, gt, ctx)
        else:
            per_key = _dataset_predictions(p, gt, format, ctx)
    except DatasetError:
        raise
    except _PARSER_ERRORS as e:
        raise DatasetError(f"{p}: malformed predictions ({type(e).__name__}: {e})"[:500]) from e
    samples = []
    used: set[str] = set()
    coco_ids = coco.image_ids(gt) if format == "coco-results" else [None] * len(gt)
    for s, cid in zip(gt.samples, coco_ids, strict=True):
        det = None
        for k in _keys(s) + ([] if cid is None else [str(cid)]):
            if k in per_key:
                det = per_key[k]
                used.add(k)
                break
        if det is None:
            det = Detections.empty(with_scores=True)
        elif det.scores is None:
            det = det.with_scores(np.ones(len(det), np.float32))
        samples.append(Sample(s.image, s.width, s.height, det, id=s.id, meta=dict(s.meta)))
    for k in per_key:
        if k not in used and len(per_key[k]):
            ctx.fail(f"{p}: predictions for image {k!r}, which is not in the ground truth")
    meta: dict[str, Any] = {"format": format, "warnings": ctx.warnings}
    if "coco_category_ids" in gt.meta:  # so that save_predictions writes the same ids
        meta["coco_category_ids"] = gt.meta["coco_category_ids"]
    return Dataset(samples, gt.class_names, meta)


def _detect_predictions(p: Path) -> str:
    if p.is_file() and p.suffix.lower() == ".json":
        with open(p, "rb") as f:
            head = f.read(64).lstrip()
        if head.startswith(b"["):
            return "coco-results"
        return "danlu-predictions" if _is_danlu_predictions(p) else "coco"
    if p.is_dir():
        for fmt in FORMATS.values():
            if fmt.detect(p):
                return fmt.name
        if any(p.glob("*.txt")):
            return "yolo-labels"
    raise DatasetError(f"{p}: cannot tell the predictions format",
                       hint="coco-results (.json list), yolo-labels (folder of .txt) or a "
                            f"dataset format ({', '.join(FORMATS)})")


def _is_danlu_predictions(p: Path) -> bool:
    """True for the ``predictions.json`` that ``danlu predict`` writes."""
    try:
        doc = coco.load_json(p)
    except DatasetError:
        return False
    return isinstance(doc, dict) and "images" in doc and "class_names" in doc \
        and "categories" not in doc


def _danlu_predictions(p: Path, gt: Dataset, ctx: ReadContext) -> dict[str, Detections]:
    """``danlu predict``'s document: images matched by file stem, classes by name."""
    doc = coco.load_json(p)
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


def _coco_results(p: Path, gt: Dataset, ctx: ReadContext) -> dict[str, Detections]:
    rows = coco.parse_results(coco.load_json(p), str(p), ctx)
    cids = coco.category_ids(gt)
    cat_to_label = {c: i for i, c in enumerate(cids)}
    groups: dict[str, list[tuple[int, list, float]]] = {}
    for i, (iid, cid, b, sc) in enumerate(rows):
        if cid not in cat_to_label:
            ctx.fail(f"{p}: [{i}].category_id: unknown category id {cid} "
                     f"(known: {cids[:20]})")
            continue
        groups.setdefault(str(iid), []).append((cat_to_label[cid], b, sc))
    out = {}
    for k, items in groups.items():
        labels = np.asarray([t[0] for t in items], np.int64)
        b = np.asarray([t[1] for t in items], np.float64).reshape(-1, 4)
        xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
        out[k] = Detections(xyxy, labels, scores=np.asarray([t[2] for t in items]))
    return out


def _yolo_labels(p: Path, gt: Dataset, ctx: ReadContext) -> dict[str, Detections]:
    sizes = {k: (s.width, s.height) for s in gt.samples for k in _keys(s)}
    out = {}
    for f in sorted(p.glob("*.txt")):
        if f.stem not in sizes:
            ctx.fail(f"{f}: no ground-truth image with stem {f.stem!r}")
            continue
        w, h = sizes[f.stem]
        raw = RawImage(None, w, h, f.stem, str(f))
        try:
            yolo._parse_labels(f, f.read_bytes(), w, h, raw)
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


def _dataset_predictions(p: Path, gt: Dataset, format: str, ctx: ReadContext
                         ) -> dict[str, Detections]:
    fmt = _format(format, p)
    if fmt.name == "yolo" and p.is_dir() and (p / "labels").is_dir():
        # predictions are label files; the images (and their sizes) are gt's
        out: dict[str, Detections] = {}
        dirs = sorted({f.parent for f in (p / "labels").rglob("*.txt")})
        for d in dirs:
            for k, v in _yolo_labels(d, gt, ctx).items():
                out.setdefault(k, v)
        return out
    sizes = {k: (s.width, s.height) for s in gt.samples for k in _keys(s)}
    sub = ReadContext(skip_invalid=ctx.skip_invalid, check_images=False, sizes=sizes)
    ds = fmt.read(p.absolute(), sub)
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
        for k in _keys(s):
            out.setdefault(k, d)
    return out


def save_predictions(preds: Dataset, path: str | os.PathLike[str],
                     format: str = "coco-results") -> Path:
    """Write predictions atomically; ``coco-results`` is a JSON list of
    ``{image_id, category_id, bbox: [x, y, w, h], score}`` (image ids as in
    :func:`danlu.data.formats.coco.image_ids`, category ids from
    ``meta["coco_category_ids"]`` or 1..K). Any dataset format is written by
    :func:`save_dataset` with ``images="none"`` (YOLO keeps scores as a 6th column)."""
    p = Path(path)
    if format == "coco-results":
        write_bytes_atomic(p, orjson.dumps(coco.to_results_list(preds)))
        return p
    return save_dataset(preds, p, format, images="none", overwrite=True)


def dataset_summary(ds: Dataset) -> dict[str, Any]:
    """A short description of ``ds``: format, images, boxes, classes, warnings."""
    return {"format": ds.meta.get("format"), "num_images": len(ds), "num_boxes": ds.num_boxes,
            "num_classes": len(ds.class_names), "warnings": len(ds.meta.get("warnings", []))}


__all__ = ["FORMATS", "Format", "register_format", "detect_format", "load_dataset",
           "save_dataset", "load_predictions", "save_predictions", "dataset_summary"]
