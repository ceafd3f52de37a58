"""Pseudo-labels: a trained model (the teacher) fills in the boxes the annotators missed.

:func:`pseudo_label` runs the teacher over a dataset and adds each detection that scores at least
``score`` and overlaps no labelled box of its class (IoU < ``iou`` with each of them). Added boxes
carry the per-box flag ``pseudo`` (True) and their teacher score in ``extra["pseudo_score"]``
(labelled boxes: flag False, score NaN). A student is then trained on the union, as on any
dataset (the flag does not change training).

On disk (:func:`save_pseudo_labels` / :func:`load_pseudo_labels`, ``danlu pseudo-label --out``)
the result is a COCO dataset (``annotations.json`` + ``images/``) whose pseudo annotations hold
two extra fields, ``"pseudo": 1`` and ``"pseudo_score": <teacher score>``. Any COCO reader
accepts the file (extra fields are ignored, so the union is what it reads);
:func:`load_pseudo_labels` restores the flag.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> ds = Dataset([Sample(None, 64, 64, Detections([[0, 0, 20, 20]], [0]), id=1)], ["a"])
    >>> class Teacher:  # anything with predict_dataset(ds, score_threshold=...)
    ...     def predict_dataset(self, ds, score_threshold=None):
    ...         return [Detections([[1, 1, 20, 20], [30, 30, 60, 60], [5, 40, 15, 50]],
    ...                            [0, 0, 0], scores=[0.9, 0.8, 0.3])]
    >>> out = pseudo_label(Teacher(), ds, score=0.7, iou=0.5)
    >>> out[0].detections.xyxy.tolist(), out[0].detections.flag("pseudo").tolist()
    ([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 60.0]], [False, True])
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from danlu.errors import ConfigError, DatasetError
from danlu.structures import Dataset, Detections


class Teacher(Protocol):
    """What :func:`pseudo_label` needs: :class:`~danlu.infer.predictor.Predictor`'s
    ``predict_dataset`` (one :class:`Detections` with scores per sample, in order)."""

    def predict_dataset(self, ds: Dataset, *, score_threshold: float | None = None
                        ) -> list[Detections]: ...


def new_boxes(labelled: Detections, found: Detections, score: float, iou: float,
              class_agnostic: bool = False) -> np.ndarray:
    """Boolean mask over ``found``: scoring ``>= score`` and with IoU ``< iou`` with every
    labelled box of the same class (of any class when ``class_agnostic``)."""
    scores = found.scores if found.scores is not None else np.ones(len(found), np.float32)
    keep = scores >= score
    if not len(labelled) or not keep.any():
        return keep
    from danlu.boxes import box_iou

    ious = box_iou(found.xyxy.astype(np.float64), labelled.xyxy.astype(np.float64))
    if not class_agnostic:
        ious = np.where(found.labels[:, None] == labelled.labels[None, :], ious, 0.0)
    return keep & (ious.max(axis=1) < iou)


def pseudo_label(teacher: Teacher, ds: Dataset, score: float = 0.7, iou: float = 0.5, *,
                 class_agnostic: bool = False) -> Dataset:
    """Add the teacher's confident detections that match no existing label.

    Args:
        teacher: a :class:`~danlu.infer.predictor.Predictor` (or any object with its
            ``predict_dataset``), trained on ``ds``'s classes.
        ds: the dataset with missing labels.
        score: keep detections scoring at least this.
        iou: a detection is new when its IoU with every labelled box of its class is below
            this.
        class_agnostic: compare with labelled boxes of every class.

    Returns:
        A new :class:`Dataset` (same images): each sample's labelled boxes (flag ``pseudo``
        False) followed by its pseudo-labels (flag True; teacher score in
        ``extra["pseudo_score"]``). ``meta["pseudo_label"]`` records ``score``, ``iou`` and
        ``added`` (the number of pseudo-labels).
    """
    if not 0 <= score <= 1 or not 0 < iou <= 1:
        raise ConfigError(f"pseudo-label: score must be in [0, 1] and iou in (0, 1] "
                          f"(got score={score}, iou={iou})")
    names = getattr(teacher, "class_names", None)
    if names and list(names) != list(ds.class_names):
        raise DatasetError(f"the teacher's classes {list(names)} differ from the dataset's "
                           f"{list(ds.class_names)}")
    found_all = teacher.predict_dataset(ds, score_threshold=score)
    if len(found_all) != len(ds):
        raise ValueError(f"teacher returned {len(found_all)} results for {len(ds)} images")
    samples, added = [], 0
    for sample, found in zip(ds.samples, found_all, strict=True):
        labelled = sample.detections
        mask = new_boxes(labelled, found, score, iou, class_agnostic)
        extra = found[mask]
        added += len(extra)
        scores = (extra.scores if extra.scores is not None
                  else np.ones(len(extra), np.float32))
        old = _plain(labelled, np.full(len(labelled), np.nan, np.float32), pseudo=False)
        new = _plain(Detections(extra.xyxy, extra.labels), scores.astype(np.float32),
                     pseudo=True, flag_names=old.flags)
        dets = Detections.concat([old, new]) if len(new) else old
        samples.append(dataclasses.replace(sample, detections=dets, meta=dict(sample.meta)))
    meta = dict(ds.meta)
    meta["pseudo_label"] = {"score": float(score), "iou": float(iou), "added": int(added),
                            "class_agnostic": bool(class_agnostic)}
    return Dataset(samples, ds.class_names, meta)


def _plain(d: Detections, pseudo_score: np.ndarray, *, pseudo: bool,
           flag_names: Any = ()) -> Detections:
    """``d`` as ground truth (no scores) with the ``pseudo`` flag and score."""
    flags = dict(d.flags)
    for k in flag_names:
        flags.setdefault(k, np.zeros(len(d), bool))
    flags["pseudo"] = np.full(len(d), pseudo, bool)
    extra = {k: v for k, v in d.extra.items() if k != "pseudo_score"}
    extra["pseudo_score"] = pseudo_score
    return Detections(d.xyxy, d.labels, polygons=d.polygons, flags=flags, extra=extra)


def save_pseudo_labels(ds: Dataset, out: str | Path, *, images: str = "copy",
                       overwrite: bool = False) -> Path:
    """Write ``ds`` as COCO (folder ``out``: ``annotations.json``, ``images/``), with
    ``"pseudo": 1`` and ``"pseudo_score"`` on each pseudo annotation; atomic."""
    from danlu.data._atomic import atomic_dir
    from danlu.data.formats.coco import write_coco

    out = Path(out)
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_coco(ds, tmp, images=images)
        path = Path(tmp) / "annotations.json"
        doc = orjson.loads(path.read_bytes())
        flags = [s.detections.flag("pseudo") for s in ds.samples]
        scores = [s.detections.extra.get("pseudo_score") for s in ds.samples]
        owner = np.concatenate([np.full(len(f), i) for i, f in enumerate(flags)] or [[]])
        within = np.concatenate([np.arange(len(f)) for f in flags] or [[]])
        if len(doc["annotations"]) != len(owner):
            raise DatasetError("pseudo-labels: the COCO writer wrote "
                               f"{len(doc['annotations'])} annotations for {len(owner)} boxes")
        for ann, i, k in zip(doc["annotations"], owner.astype(int), within.astype(int),
                             strict=True):
            if flags[i][k]:
                ann["pseudo"] = 1
                if scores[i] is not None:
                    ann["pseudo_score"] = round(float(scores[i][k]), 6)
        doc.setdefault("info", {})["danlu_pseudo_label"] = ds.meta.get("pseudo_label", {})
        path.write_bytes(orjson.dumps(doc))
    return out


def load_pseudo_labels(path: str | Path) -> Dataset:
    """Read what :func:`save_pseudo_labels` wrote, with the ``pseudo`` flag restored (False for
    annotations without the field) and ``extra["pseudo_score"]`` (NaN for labelled boxes)."""
    from danlu.data.io import load_dataset

    path = Path(path)
    ds = load_dataset(path, format="coco")
    json_path = path / "annotations.json" if path.is_dir() else path
    doc = orjson.loads(json_path.read_bytes())
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for ann in doc.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    samples = []
    for sample, image in zip(ds.samples, doc["images"], strict=True):
        anns = by_image.get(image["id"], [])
        d = sample.detections
        if len(anns) != len(d):
            raise DatasetError(f"{json_path}: image {image['id']}: {len(anns)} annotations, "
                               f"{len(d)} boxes read")
        flags = dict(d.flags)
        flags["pseudo"] = np.array([bool(a.get("pseudo", 0)) for a in anns], bool)
        extra = dict(d.extra)
        extra["pseudo_score"] = np.array([a.get("pseudo_score", np.nan) for a in anns],
                                         np.float32)
        det = Detections(d.xyxy, d.labels, d.scores, d.polygons, flags, extra)
        samples.append(dataclasses.replace(sample, detections=det))
    meta = dict(ds.meta)
    if "danlu_pseudo_label" in doc.get("info", {}):
        meta["pseudo_label"] = doc["info"]["danlu_pseudo_label"]
    return Dataset(samples, ds.class_names, meta)


__all__ = ["pseudo_label", "new_boxes", "save_pseudo_labels", "load_pseudo_labels", "Teacher"]
