"""Read and write datasets in any supported format, and read predictions aligned to ground truth.

Formats (a small registry, :data:`FORMATS`; :func:`register_format` adds one):

==========  ==============================================================================
``voc``     Pascal VOC folder: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main``
``coco``    COCO instances JSON (a ``.json`` file, or a folder with ``annotations.json``)
``yolo``    Ultralytics YOLO: ``data.yaml``, ``images/<split>/``, ``labels/<split>/*.txt``
``dota``    DOTA v1/v1.5/v2: ``images/``, ``labelTxt/*.txt`` (4-point polygons)
``labelme`` LabelMe: a folder of one ``<stem>.json`` per image (rectangles, polygons)
``cvat``    CVAT for images 1.1: ``annotations.xml`` (boxes, rotated boxes, polygons), ``images/``
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
from importlib import import_module
from pathlib import Path
from typing import Any

import orjson

from danlu.data._atomic import atomic_dir, write_bytes_atomic
from danlu.data.formats import coco, coco_results, predictions
from danlu.data.formats._common import (
    IMAGE_MODES,
    Progress,
    ReadContext,
    no_progress,
    paused_gc,
)
from danlu.errors import DatasetError
from danlu.structures import Dataset


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


class _Deferred:
    """``danlu.data.formats.<module>.<name>``, imported on the first call: reading one format
    does not import the others' parsers (XML, YAML)."""

    def __init__(self, module: str, name: str) -> None:
        self._where = (f"danlu.data.formats.{module}", name)
        self._fn: Callable[..., Any] | None = None
        self.__name__ = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fn is None:
            self._fn = getattr(import_module(self._where[0]), self._where[1])
        return self._fn(*args, **kwargs)


def _has_folder(name: str) -> Callable[[Path], bool]:
    """A detector for a folder format marked by the sub-folder ``name`` (``voc.is_voc`` and
    ``dota.is_dota`` test exactly this), without importing the reader."""
    def detect(path: Path) -> bool:
        return path.is_dir() and (path / name).is_dir()
    return detect


register_format(Format("voc", "Pascal VOC XML folder", _has_folder("Annotations"),
                       _Deferred("voc", "read_voc"), _Deferred("voc", "write_voc")))
register_format(Format("dota", "DOTA labelTxt folder", _has_folder("labelTxt"),
                       _Deferred("dota", "read_dota"), _Deferred("dota", "write_dota")))
register_format(Format("coco", "COCO instances JSON", coco.is_coco, coco.read_coco,
                       coco.write_coco))
# before yolo: LabelMe and CVAT folders often have images/ or classes.txt, which yolo claims
register_format(Format("cvat", "CVAT for images 1.1 XML", _Deferred("cvat", "is_cvat"),
                       _Deferred("cvat", "read_cvat"), _Deferred("cvat", "write_cvat")))
register_format(Format("labelme", "LabelMe JSON folder", _Deferred("labelme", "is_labelme"),
                       _Deferred("labelme", "read_labelme"),
                       _Deferred("labelme", "write_labelme")))
register_format(Format("yolo-obb", "Ultralytics YOLO OBB folder (oriented boxes)",
                       _Deferred("yolo", "is_yolo_obb"), _Deferred("yolo", "read_yolo"),
                       _Deferred("yolo", "write_yolo_obb")))
register_format(Format("yolo", "Ultralytics YOLO folder", _Deferred("yolo", "is_yolo"),
                       _Deferred("yolo", "read_yolo"), _Deferred("yolo", "write_yolo")))

# Exceptions a parser may leak on input nobody anticipated: reported as DatasetError.
_PARSER_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
                  UnicodeError, RecursionError, struct.error, MemoryError)


def detect_format(path: str | os.PathLike[str]) -> str:
    """The name of the format of the dataset at ``path``.

    Returns:
        ``"voc"`` (``Annotations/``), ``"dota"`` (``labelTxt/``), ``"coco"`` (a ``.json`` file
        or ``annotations.json`` / ``annotations/*.json``: the COCO-2017 folder with several
        ``instances_<split>.json`` too) or ``"yolo"`` (a YAML file with ``names``, or
        ``images/``, Roboflow's ``<split>/images/``, CVAT's ``obj.data`` / ``obj.names``,
        LabelImg's ``classes.txt`` beside images), checked in that order.

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
                 class_names: Sequence[str] | str | None = None,
                 check_images: bool | str = True, image_dir: str | os.PathLike[str] | None = None,
                 progress: Progress | None = None) -> Dataset:
    """Read a dataset from disk.

    Args:
        path: the dataset folder or file (see the format table in the module docstring).
        format: ``"voc"``, ``"coco"``, ``"yolo"`` or ``"dota"``; None detects it.
        split: VOC ``ImageSets/Main/<split>.txt``, a YOLO ``data.yaml`` key or split folder
            (``val`` also finds ``valid``), COCO ``annotations/instances_<split>.json``; None
            reads everything (a COCO folder with several splits then raises, listing them).
        skip_invalid: skip bad boxes, files and images instead of raising; each skip is
            described in ``meta["warnings"]``.
        class_names: the expected classes, in label order; a name outside them is an error.
            DOTA also takes ``"dota-v1.0"``, ``"dota-v1.5"``, ``"dota-v2.0"``.
        check_images: True: every image must be on disk (else an error, or a skip with
            ``skip_invalid``); ``"warn"``: read the annotations of images that are not (formats
            that store the sizes) and count them in ``meta["notices"]``; False: do not look.
        image_dir: a folder to find the images in when they are not where the annotations
            say (:func:`danlu.data.images_elsewhere.relocate_images`).
        progress: wraps the file iteration, ``progress(items, description, total)``.

    Returns:
        A :class:`Dataset` with absolute image paths, continuous ``xyxy`` boxes, and
        ``meta["format"]``, ``meta["warnings"]`` (the skipped items, a list of strings) and
        ``meta["notices"]`` (what was read but a person should know, e.g. YOLO images without
        a label file; a list of strings).

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
    ctx = ReadContext(skip_invalid=skip_invalid,
                      check_images=check_images is True and image_dir is None, split=split,
                      class_names=names, progress=progress or no_progress)  # type: ignore[arg-type]
    try:
        with paused_gc():
            ds = fmt.read(p.absolute(), ctx)
    except DatasetError:
        raise
    except _PARSER_ERRORS as e:
        raise DatasetError(f"{p}: malformed {fmt.name} dataset ({type(e).__name__}: {e})"[:500]) \
            from e
    if image_dir is not None or check_images == "warn":
        from danlu.data.images_elsewhere import apply_image_policy

        ds = apply_image_policy(ds, ctx, check_images, image_dir)
    ds.meta["warnings"] = ctx.warnings
    ds.meta["notices"] = ctx.notices
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
def load_predictions(path: str | os.PathLike[str], gt: Dataset, format: str | None = None, *,
                     skip_invalid: bool = False) -> Dataset:
    """Read predictions and pair them, image by image, with the ground truth ``gt``.

    Images are paired by file name where the file names them, by id where both sides have
    ids, never by position (:mod:`danlu.data.formats.pairing` has the rule); classes by
    name where the file has names, else by id. Accepted inputs (``format`` is detected when
    None):

    * ``coco-results``: a COCO results JSON list of ``{image_id, category_id, bbox, score}``
      (bbox ``[x, y, w, h]``). A result with a ``file_name`` (every one must then have one)
      is paired by it; an integer ``image_id`` only with a ``gt`` sample of that integer id
      (a ground truth read from COCO: one read from VOC, YOLO or DOTA has none, and is an
      error); a string one with a sample of that id, else by name. ``category_id`` maps
      through ``gt.meta["coco_category_ids"]`` when present (a gt read from COCO), else ids
      1..K in ``gt.class_names`` order (what :func:`save_predictions` and danlu's COCO writer
      use).
    * ``danlu-predictions``: the ``predictions.json`` that ``danlu predict`` writes (images
      by ``path``, classes by name).
    * ``yolo-labels``: a folder of YOLO ``*.txt`` files (``cls cx cy w h score``), one per
      image stem, classes by index; sizes come from ``gt``.
    * ``dota-task1`` / ``dota-task2``: a folder of DOTA result files (``Task1_<class>.txt``:
      ``image score x1 y1 ... x4 y4``; ``Task2_<class>.txt``: ``image score xmin ymin xmax
      ymax``), images by stem, classes by the file's name.
    * any dataset format danlu writes (``coco``, ``voc``, ``yolo``, ``dota``): read with
      image sizes from ``gt`` where the format needs them, images by file name, classes by
      name.

    Returns:
        A :class:`Dataset` with ``gt``'s samples (same order, image, size and id) holding the
        predictions (scores 1.0 where the file has none; an empty ``Detections`` with scores
        where an image has no prediction), ``gt.class_names``, ``meta["warnings"]`` and
        ``meta["pairing"]`` (how images and classes were paired:
        :func:`danlu.data.formats.pairing.pairing_meta`).

    Raises:
        DatasetError: a malformed file; integer image ids against a ground truth without
            them; an image or class name not in ``gt``, or a name that matches several
            images (or, with ``skip_invalid``, those are skipped and listed in
            ``meta["warnings"]``).

    Example:
        >>> import tempfile, pathlib
        >>> from danlu.structures import Sample
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
    p = _prediction_file(p, format)
    if format is None:
        format = _detect_predictions(p)
    return _predictions(p, gt, format, ctx)


def _predictions(p: Path, gt: Dataset, format: str, ctx: ReadContext, cols: Any = None
                 ) -> Dataset:
    try:
        with paused_gc():
            found = _read_predictions(p, gt, format, ctx, cols)
    except DatasetError:
        raise
    except _PARSER_ERRORS as e:
        raise DatasetError(f"{p}: malformed predictions ({type(e).__name__}: {e})"[:500]) from e
    with paused_gc():
        return predictions.align(p, gt, format, found, ctx)


def load_with_predictions(gt_path: str | os.PathLike[str], pred_path: str | os.PathLike[str],
                          *, gt_format: str | None = None, pred_format: str | None = None,
                          check_images: bool = True, skip_invalid: bool = False,
                          progress: Progress | None = None, split: str | None = None,
                          image_dir: str | os.PathLike[str] | None = None
                          ) -> tuple[Dataset, Dataset]:
    """:func:`load_dataset` of ``gt_path`` (its ``split`` when given) and
    :func:`load_predictions` of ``pred_path``
    against it, with the same results.

    A COCO results file is read in a second thread while the ground truth is parsed (its
    scanner runs without holding the GIL), which saves most of the shorter of the two reads.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "gt.json").write_text('{"images": [{"id": 1, "file_name": "a.jpg", '
        ...     '"width": 64, "height": 48}], "annotations": [], '
        ...     '"categories": [{"id": 1, "name": "cat"}]}')
        >>> _ = (d / "r.json").write_text('[{"image_id": 1, "category_id": 1, '
        ...                               '"bbox": [1, 2, 10, 20], "score": 0.9}]')
        >>> gt, preds = load_with_predictions(d / "gt.json", d / "r.json", check_images=False)
        >>> preds[0].detections.xyxy.tolist()
        [[1.0, 2.0, 11.0, 22.0]]
    """
    for path in (Path(gt_path), Path(pred_path)):  # in the order the reads report them
        if not path.exists():
            raise DatasetError(f"{path}: no such file or folder")
    p = _prediction_file(Path(pred_path), pred_format)
    format = pred_format or _detect_predictions(p)
    ctx = ReadContext(skip_invalid=skip_invalid, check_images=False)
    if format != "coco-results":
        gt = load_dataset(gt_path, gt_format, split=split, check_images=check_images,
                          image_dir=image_dir, skip_invalid=skip_invalid, progress=progress)
        return gt, _predictions(p, gt, format, ctx)
    from concurrent.futures import ThreadPoolExecutor

    def columns() -> Any:
        try:
            return coco_results.read_results(p, ctx)
        except _PARSER_ERRORS as e:
            raise DatasetError(f"{p}: malformed predictions ({type(e).__name__}: {e})"[:500]) \
                from e

    with ThreadPoolExecutor(1) as pool:
        cols = pool.submit(columns)
        gt = load_dataset(gt_path, gt_format, split=split, check_images=check_images,
                          image_dir=image_dir, skip_invalid=skip_invalid, progress=progress)
        return gt, _predictions(p, gt, format, ctx, cols.result())


def _read_predictions(p: Path, gt: Dataset, format: str, ctx: ReadContext, cols: Any = None
                      ) -> predictions.PredictedImages:
    """The predictions of each image ``p`` names (``cols``: the columns of a COCO results
    file, already read)."""
    if format == "coco-results":
        return coco_results.results_by_image(p, gt, ctx, cols)
    if format == "danlu-predictions":
        return predictions.danlu_predictions(p, gt, ctx)
    if format == "yolo-labels":
        return predictions.yolo_label_predictions(p, gt, ctx)
    if format in ("dota-task1", "dota-task2"):
        return predictions.dota_result_predictions(p, gt, ctx, int(format[-1]))
    fmt = _format(format, p)
    return predictions.dataset_predictions(p, gt, fmt.name, fmt.read, ctx)


def _prediction_file(p: Path, format: str | None) -> Path:
    """``p``, or the ``predictions.json`` inside it when ``p`` is a folder ``danlu predict``
    wrote (its other files, drawn pictures and other formats, are then not read)."""
    inner = p / "predictions.json"
    if p.is_dir() and format in (None, "danlu-predictions") and inner.is_file() \
            and predictions.is_danlu_predictions(inner):
        return inner
    return p


def _detect_predictions(p: Path) -> str:
    if p.is_file() and p.suffix.lower() == ".json":
        with open(p, "rb") as f:
            head = f.read(64).lstrip()
        if head.startswith(b"["):
            return "coco-results"
        return "danlu-predictions" if predictions.is_danlu_predictions(p) else "coco"
    if p.is_dir():
        for fmt in FORMATS.values():
            if fmt.detect(p):
                return fmt.name
        task = predictions.dota_results_task(p)
        if task is not None:
            return f"dota-task{task}"
        if any(p.glob("*.txt")):
            return "yolo-labels"
    raise DatasetError(f"{p}: cannot tell the predictions format",
                       hint="coco-results (.json list), yolo-labels (folder of .txt), "
                            "dota-task1/dota-task2 (Task1_<class>.txt files) or a "
                            f"dataset format ({', '.join(FORMATS)})")


def skipped_report(warnings: Sequence[str], where: str = "", limit: int = 10) -> str:
    """What a ``skip_invalid`` read skipped, for people: a count line, then the first
    ``limit`` items (each names its file), then how many more. Empty when nothing was skipped.

    Example:
        >>> print(skipped_report(["a.xml: object 1 has no <bndbox>"], "training data"))
        skipped 1 invalid items (training data):
          a.xml: object 1 has no <bndbox>
    """
    if not warnings:
        return ""
    head = f"skipped {len(warnings)} invalid items" + (f" ({where})" if where else "")
    lines = [head + ":", *(f"  {w}" for w in warnings[:limit])]
    if len(warnings) > limit:
        lines.append(f"  ... and {len(warnings) - limit} more")
    return "\n".join(lines)


def dataset_notices(ds: Dataset) -> list[str]:
    """What a read found that a person should know although nothing was skipped: the
    readers' ``meta["notices"]`` (YOLO images without a label file, a split left out) and how
    many images were found by the annotation file's stem rather than by its own file name."""
    notes = list(ds.meta.get("notices") or [])
    stem = (ds.meta.get("image_lookup") or {}).get("stem", 0)
    if stem:
        notes.append(f"{stem} of {len(ds)} images found by the annotation file's stem "
                     "(JPEGImages/<stem>.*), not by <filename>")
    return notes


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
           "save_dataset", "load_predictions", "load_with_predictions", "save_predictions",
           "dataset_summary", "skipped_report"]
