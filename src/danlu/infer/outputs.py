"""The files ``danlu predict`` writes, each readable back by :func:`danlu.data.io.load_predictions`
(or, for DOTA's result files, by the DOTA evaluation server and devkit).

* ``danlu`` — ``predictions.json``: always written (the document ``--json`` prints);
* ``coco`` — ``predictions.coco.json``: a COCO instances document (images by file name,
  annotations with ``score``), so any COCO tool or ``danlu eval --pred`` reads it;
* ``voc`` / ``yolo`` / ``dota`` — ``OUT/voc/``, ``OUT/yolo/``, ``OUT/dota/``: label files in
  that dataset layout, no images (YOLO's 6th column and DOTA's keep the score);
* ``dota-task1`` / ``dota-task2`` — ``OUT/dota-task1/Task1_<class>.txt`` (``image score x1 y1
  ... x4 y4``, oriented) and ``OUT/dota-task2/Task2_<class>.txt`` (``image score xmin ymin xmax
  ymax``): the DOTA benchmark's result files, one per class, image names without suffix;
* GeoJSON — ``OUT/geojson/<stem>.geojson`` for every input that carries a geotransform
  (a GeoTIFF), written whatever the format (:func:`danlu.infer.geo.detections_to_geojson`).

Example:
    >>> import tempfile, pathlib
    >>> from danlu.structures import Detections
    >>> rows = dota_result_lines({"P0001": Detections([[1, 2, 11, 22]], [0], scores=[0.5])},
    ...                          ["plane"], task=2)
    >>> rows["plane"]
    ['P0001 0.500000 1.0 2.0 11.0 22.0']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from danlu.data._atomic import write_bytes_atomic
from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample

FORMATS = ("danlu", "coco", "voc", "yolo", "dota", "dota-task1", "dota-task2")


def check_formats(formats: Sequence[str]) -> list[str]:
    """The formats asked for, each known (ConfigError otherwise)."""
    out = []
    for f in formats:
        for name in str(f).split(","):
            name = name.strip().lower()
            if name and name not in FORMATS:
                raise ConfigError(f"unknown prediction format {name!r}",
                                  hint="one of " + ", ".join(FORMATS))
            if name and name not in out:
                out.append(name)
    return out


class ResultNames:
    """One distinct file stem per result, in order: the image's stem (``<stem>_<frame>`` for a
    video frame), ``_2``, ``_3`` ... on a clash. The drawn picture and every written format
    name a result alike."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, result: Any) -> str:
        p = result.path
        stem = p.stem if result.frame is None else f"{p.stem}_{result.frame:06d}"
        name, k = stem, 1
        while name in self.used:
            k += 1
            name = f"{stem}_{k}"
        self.used.add(name)
        return name


def predictions_dataset(results: Sequence[Any], class_names: Sequence[str]) -> Dataset:
    """The results as a :class:`Dataset` (one sample per image or frame)."""
    samples = [Sample(r.path, r.width, r.height, r.detections, id=i)
               for r, i in zip(results, map(ResultNames(), results), strict=True)]
    return Dataset(samples, list(class_names), {"format": "predictions"})


def _corners(det: Detections) -> np.ndarray:
    if det.polygons is not None:
        return det.polygons.reshape(-1, 8)
    x1, y1, x2, y2 = det.xyxy.T
    return np.stack([x1, y1, x2, y1, x2, y2, x1, y2], axis=1)


def dota_result_lines(per_image: Mapping[str, Detections], class_names: Sequence[str],
                      task: int) -> dict[str, list[str]]:
    """``{class name: lines}`` of DOTA's Task1 (oriented: 4 corners) or Task2 (axis-aligned:
    ``xmin ymin xmax ymax``) result files; scores with 6 decimals, coordinates with 1."""
    lines: dict[str, list[str]] = {c: [] for c in class_names}
    for name, det in per_image.items():
        if not len(det):
            continue
        coords = _corners(det) if task == 1 else det.xyxy
        scores = det.scores if det.scores is not None else np.ones(len(det), np.float32)
        for label, score, row in zip(det.labels.tolist(), scores.tolist(), coords.tolist(),
                                     strict=True):
            lines[class_names[label]].append(
                f"{name} {score:.6f} " + " ".join(f"{v:.1f}" for v in row))
    return lines


def write_dota_results(ds: Dataset, folder: Path, task: int) -> Path:
    """DOTA's result files of ``ds`` in ``folder`` (``Task{task}_<class>.txt``, one per class,
    written even when empty: the server expects every class)."""
    folder.mkdir(parents=True, exist_ok=True)
    per_image = {str(s.id): s.detections for s in ds.samples}
    for cls, rows in dota_result_lines(per_image, ds.class_names, task).items():
        safe = cls.replace("/", "_").replace(" ", "-")
        write_bytes_atomic(folder / f"Task{task}_{safe}.txt",
                           ("\n".join(rows) + ("\n" if rows else "")).encode())
    return folder


def write_outputs(doc: dict[str, Any], results: Sequence[Any], class_names: Sequence[str],
                  out: Path, formats: Sequence[str]) -> dict[str, str]:
    """Write ``predictions.json`` and the asked ``formats`` (module docstring); returns
    ``{format: path}`` and records it in ``doc["outputs"]``. What a format cannot hold (VOC
    and DOTA: the scores) is one ``warning:`` line on stderr per kind, with its count."""
    import sys

    from danlu.data.formats.losses import conversion_losses
    from danlu.data.io import save_dataset

    written = {"danlu": str(out / "predictions.json")}
    wanted = [f for f in check_formats(formats) if f != "danlu"]
    ds = predictions_dataset(results, class_names) if wanted or any(
        r.geo is not None for r in results) else None
    for fmt in wanted:
        assert ds is not None
        for line in conversion_losses(ds, fmt):
            print(f"warning: --to {fmt}: {line}", file=sys.stderr)
        if fmt == "coco":
            path = out / "predictions.coco.json"
            save_dataset(ds, path, "coco", images="none", overwrite=True)
        elif fmt.startswith("dota-task"):
            path = write_dota_results(ds, out / fmt, int(fmt[-1]))
        else:
            path = save_dataset(ds, out / fmt, fmt, images="none", overwrite=True)
        written[fmt] = str(path)
    geo = [(r, s) for r, s in zip(results, ds.samples if ds else [], strict=False)
           if r.geo is not None]
    if geo:
        from danlu.infer.geo import detections_to_geojson

        folder = out / "geojson"
        folder.mkdir(parents=True, exist_ok=True)
        for r, s in geo:
            gj = detections_to_geojson(r.detections, list(class_names), r.geo,
                                       image_name=str(r.path))
            write_bytes_atomic(folder / f"{s.id}.geojson", orjson.dumps(gj))
        written["geojson"] = str(folder)
    doc["outputs"] = written
    write_bytes_atomic(out / "predictions.json", orjson.dumps(
        doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    return written


__all__ = ["FORMATS", "ResultNames", "check_formats", "write_outputs", "write_dota_results",
           "dota_result_lines", "predictions_dataset"]
