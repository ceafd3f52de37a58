"""Predictions in the formats danlu reads besides COCO results: ``danlu predict``'s document,
a folder of YOLO label files, DOTA's Task1/Task2 result files, any dataset format; and
their alignment to the ground truth.

Each reader returns a :class:`~danlu.data.formats.pairing.PredictedImages`: the image
names the file uses (all of these name images by file: path, file name or stem) with their
detections, labels already the ground truth's, and how the classes were mapped (by name
where the file has class names; a bare folder of YOLO label files has only indices).
:func:`align` pairs them with the ground-truth samples
(:func:`~danlu.data.formats.pairing.pair_images`: by name or id, never by position). The
entry point is :func:`danlu.data.io.load_predictions`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from danlu.data.formats._common import RawImage, ReadContext, file_stem
from danlu.data.formats.coco import load_json
from danlu.data.formats.pairing import PredictedImages, pair_images, pairing_meta
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample


def align(p: Path, gt: Dataset, format: str, found: PredictedImages, ctx: ReadContext
          ) -> Dataset:
    """``gt``'s samples holding the predictions paired with them (an empty ``Detections``
    with scores where none are; scores 1.0 where the file has none); ``meta["pairing"]``
    says how (:func:`~danlu.data.formats.pairing.pairing_meta`)."""
    pairing = found.pairing
    if pairing is None:
        pairing = pair_images(found.keys, found.by, gt, str(p), ctx, nonempty=[
            d is not None and len(d) > 0 for d in found.detections])
    per_sample: list[Detections | None] = [None] * len(gt)
    for j, det in zip(pairing.index, found.detections, strict=True):
        if j >= 0 and det is not None:
            per_sample[j] = det
    samples = []
    for s, det in zip(gt.samples, per_sample, strict=True):
        if det is None:
            det = Detections.empty(with_scores=True)
        elif det.scores is None:
            det = det.with_scores(np.ones(len(det), np.float32))
        samples.append(Sample(s.image, s.width, s.height, det, id=s.id, meta=dict(s.meta)))
    meta: dict[str, Any] = {"format": format, "warnings": ctx.warnings,
                            "pairing": pairing_meta(pairing, found.classes, found.notes)}
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


def danlu_predictions(p: Path, gt: Dataset, ctx: ReadContext) -> PredictedImages:
    """``danlu predict``'s document: images named by ``path``, classes by name."""
    doc = load_json(p)
    names = doc.get("class_names")
    if not isinstance(names, list) or not isinstance(doc.get("images"), list):
        raise DatasetError(f"{p}: expected 'class_names' and 'images' lists")
    to_gt = {c: i for i, c in enumerate(gt.class_names)}
    keys: list[Any] = []
    dets: list[Detections | None] = []
    seen: set[str] = set()
    for i, rec in enumerate(doc["images"]):
        try:
            det = Detections.from_dict(rec["detections"])
            path = rec["path"]
            if not isinstance(path, str) or not path:
                raise TypeError(f"path {path!r} is not a file name")
        except (KeyError, TypeError, ValueError) as e:
            ctx.fail(f"{p}: images[{i}]: expected path and detections ({e})")
            continue
        if path in seen:
            ctx.fail(f"{p}: images[{i}]: image {path!r} a second time")
            continue
        unknown = sorted({str(names[k]) for k in set(det.labels.tolist())
                          if not 0 <= k < len(names) or names[k] not in to_gt})
        if unknown:
            ctx.fail(f"{p}: images[{i}].detections: classes not in the ground truth: {unknown}")
            continue
        seen.add(path)
        remap = np.asarray([to_gt.get(n, -1) for n in names], np.int64)
        keys.append(path)
        dets.append(Detections(det.xyxy, remap[det.labels] if len(det) else det.labels,
                               scores=det.scores))
    return PredictedImages(keys, dets, "name", "name")


def yolo_label_predictions(p: Path, gt: Dataset, ctx: ReadContext,
                           class_names: list[str] | None = None,
                           files: list[Path] | None = None) -> PredictedImages:
    """YOLO label files (``files``, else ``p/*.txt``), one per image stem, each read with
    the size of the ground-truth image it pairs with. Labels are indices into ``gt``'s
    classes, or into ``class_names`` (a ``data.yaml``'s names) mapped by name."""
    from danlu.data.formats.yolo import _line_of
    from danlu.data.formats.yolo import _parse_labels as _parse_yolo_labels

    files = sorted(p.glob("*.txt")) if files is None else files
    keys: list[Any] = [f.stem for f in files]
    pairing = pair_images(keys, "name", gt, str(p), ctx,
                          nonempty=[f.stat().st_size > 0 for f in files])
    if class_names is not None:
        index = gt.class_to_index
        remap = np.asarray([index.get(c, -1) for c in class_names], np.int64)
    else:
        remap = np.arange(len(gt.class_names), dtype=np.int64)
    dets: list[Detections | None] = []
    for f, j in zip(files, pairing.index, strict=True):
        dets.append(None)
        if j < 0:
            continue
        s = gt.samples[j]
        raw = RawImage(None, s.width, s.height, f.stem, str(f))
        try:
            _parse_yolo_labels(f, f.read_bytes(), s.width, s.height, raw,
                               num_classes=len(remap))
        except DatasetError as e:
            ctx.fail(e.message)
            continue
        labels = remap[np.asarray(raw.names, np.int64)]  # indices checked by the parser
        if (labels < 0).any():
            k = int(np.flatnonzero(labels < 0)[0])
            ctx.fail(f"{f}: {_line_of(raw, k)}: class index {raw.names[k]} is a class the "
                     "ground truth lacks")
            continue
        dets[-1] = Detections(raw.boxes, labels, scores=raw.scores)
    return PredictedImages(keys, dets, "name", "name" if class_names is not None else "index",
                           pairing)


def dataset_predictions(p: Path, gt: Dataset, format: str,
                        read: Callable[[Path, ReadContext], Dataset], ctx: ReadContext
                        ) -> PredictedImages:
    """Predictions stored as a dataset of ``format`` (read by ``read``, its registry
    reader), with image sizes from ``gt`` where the format has none; images by their path
    inside the dataset, classes by name."""
    if format == "yolo" and p.is_dir() and (p / "labels").is_dir():
        # predictions are label files; the images (and their sizes) are gt's
        from danlu.data.formats import _yolo_layout as layout

        yml = layout.find_yaml(p)
        doc = layout.load_yaml(yml) if yml is not None else {}
        names = layout.yaml_names(doc, str(yml)) if "names" in doc else None
        files = sorted((p / "labels").rglob("*.txt"))
        return yolo_label_predictions(p, gt, ctx, names, files)
    sizes = {k: (s.width, s.height) for s in gt.samples for k in _stems(s)}
    sub = ReadContext(skip_invalid=ctx.skip_invalid, check_images=False, sizes=sizes)
    ds = read(p.absolute(), sub)
    ctx.warnings.extend(sub.warnings)
    index = gt.class_to_index
    remap = np.asarray([index.get(c, -1) for c in ds.class_names], np.int64)
    root = p.absolute() if p.is_dir() else p.absolute().parent
    keys: list[Any] = []
    dets: list[Detections | None] = []
    for s in ds.samples:
        d = s.detections
        if len(d) and (remap[d.labels] < 0).any():
            unknown = sorted({ds.class_names[i] for i in d.labels[remap[d.labels] < 0]})
            ctx.fail(f"{p}: image {s.id!r}: class names {unknown} are not in the ground truth")
            d = d[remap[d.labels] >= 0]
        keys.append(_name_in(s, root))
        dets.append(Detections(d.xyxy, remap[d.labels] if len(d) else d.labels,
                               scores=d.scores, polygons=d.polygons, flags=d.flags,
                               extra=d.extra))
    return PredictedImages(keys, dets, "name", "name")


def _stems(s: Sample) -> list[str]:
    out = [str(s.id)] if s.id is not None else []
    if isinstance(s.image, (str, Path)):
        out.append(file_stem(os.fspath(s.image)))
    return out


def _name_in(s: Sample, root: Path) -> str:
    """A predicted sample's image as a name: its path inside ``root`` (else the whole
    path); its id when it has no path."""
    if not isinstance(s.image, (str, Path)):
        return str(s.id)
    path = Path(s.image)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


# -- DOTA's result files --------------------------------------------------------------------
def dota_results_task(p: Path) -> int | None:
    """1 or 2 for a folder of DOTA Task1/Task2 result files (``Task1_<class>.txt``, as
    ``danlu predict --to dota-task1`` and the DOTA server use), else None."""
    if not p.is_dir():
        return None
    names = [f.name for f in p.glob("*.txt")]
    for task in (1, 2):
        if names and all(n.startswith(f"Task{task}_") for n in names):
            return task
    return None


def _safe(name: str) -> str:
    """A class name as its result file spells it (as
    :func:`danlu.infer.outputs.write_dota_results` writes it)."""
    return name.replace("/", "_").replace(" ", "-")


def dota_result_predictions(p: Path, gt: Dataset, ctx: ReadContext, task: int
                            ) -> PredictedImages:
    """DOTA's result files: ``Task1_<class>.txt`` lines ``image score x1 y1 ... x4 y4``
    (oriented) or ``Task2_<class>.txt`` lines ``image score xmin ymin xmax ymax``; images
    named by stem, classes by the file's name."""
    by_file: dict[str, int] = {}
    for i, c in enumerate(gt.class_names):
        if by_file.setdefault(_safe(c), i) != i:
            raise DatasetError(f"{p}: classes {gt.class_names[by_file[_safe(c)]]!r} and {c!r} "
                               f"share one result file name, Task{task}_{_safe(c)}.txt")
    width = 8 if task == 1 else 4
    rows: dict[str, list[tuple[int, list[float]]]] = {}
    for f in sorted(p.glob(f"Task{task}_*.txt")):
        label = by_file.get(f.stem[len(f"Task{task}_"):], -1)
        try:
            lines = f.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DatasetError(f"{f}: cannot read as UTF-8 text ({e})") from e
        if label < 0:
            if any(line.strip() for line in lines):
                ctx.fail(f"{f}: class {f.stem[6:]!r} is not in the ground truth "
                         f"(its classes: {gt.class_names[:20]})")
            continue
        for n, line in enumerate(lines, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts[1:]]
                ok = len(values) == 1 + width and bool(np.isfinite(values).all())
            except ValueError:
                ok = False
            if task == 2 and ok:
                ok = values[3] >= values[1] and values[4] >= values[2]
            if not ok:
                ctx.fail(f"{f}: line {n}: expected 'image score' and {width} coordinates"
                         + (" (xmin ymin xmax ymax)" if task == 2 else "")
                         + f", got {line.strip()[:80]!r}")
                continue
            rows.setdefault(parts[0], []).append((label, values))
    keys: list[Any] = list(rows)
    dets: list[Detections | None] = []
    for k in keys:
        labels = np.asarray([r[0] for r in rows[k]], np.int64)
        values = np.asarray([r[1] for r in rows[k]], np.float32)
        if task == 1:
            dets.append(Detections(None, labels, scores=values[:, 0],
                                   polygons=values[:, 1:].reshape(-1, 4, 2)))
        else:
            dets.append(Detections(values[:, 1:], labels, scores=values[:, 0]))
    return PredictedImages(keys, dets, "name", "name")


__all__ = ["align", "is_danlu_predictions", "danlu_predictions", "yolo_label_predictions",
           "dataset_predictions", "dota_results_task", "dota_result_predictions"]
