"""Cut every object out of its image, and keep each background with its objects blacked out.

Useful to build copy-paste material (objects with their class, clean backgrounds) or to look
at the objects of a class side by side.

Layout written under ``out_dir``::

    objects/<class name>/<image id>_<k>.png   # the k-th box of the image, cropped
    backgrounds/<image id>.png                # the image with every object filled black

A crop is the box rounded outwards to whole pixels (``floor(x1), floor(y1), ceil(x2),
ceil(y2)``) and clipped to the image; oriented objects are cropped by their enclosing box and
blacked out by their polygon. Boxes with no pixel inside the image are skipped.

Example:
    >>> import tempfile, pathlib
    >>> from danlu.data.synth import synthesize
    >>> ds = synthesize("shapes", 2, seed=0, image_size=(64, 64), scale_range=(12, 20))
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> summary = crop_objects(ds, out)
    >>> summary["objects"] == ds.num_boxes, summary["backgrounds"]
    (True, 2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from danlu.data._atomic import write_bytes_atomic
from danlu.data.show import safe_name, unique_names
from danlu.data.synth import encode_png
from danlu.structures import Dataset, Detections


def object_windows(det: Detections, width: int, height: int) -> np.ndarray:
    """``[N, 4]`` int64 pixel windows ``x1, y1, x2, y2`` (end exclusive) of the boxes,
    rounded outwards and clipped to the image; empty windows have ``x2 <= x1`` or ``y2 <= y1``.

    Example:
        >>> object_windows(Detections(np.array([[1.5, 2.2, 4.1, 9.0]]), [0]), 8, 8).tolist()
        [[1, 2, 5, 8]]
    """
    b = det.xyxy.astype(np.float64)
    lo = np.floor(b[:, :2]).astype(np.int64)
    hi = np.ceil(b[:, 2:]).astype(np.int64)
    lo = np.clip(lo, 0, [width, height])
    hi = np.clip(hi, 0, [width, height])
    return np.concatenate([lo, hi], 1)


def black_out(image: np.ndarray, det: Detections) -> np.ndarray:
    """A copy of ``image`` with every object filled with 0 (its polygon, else its box).

    Boxes are filled on whole pixels, rounded outwards as in :func:`object_windows`.
    """
    out = np.array(image)
    h, w = out.shape[:2]
    if det.polygons is not None and len(det):
        mask = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(mask)
        for poly in det.polygons:
            draw.polygon([tuple(map(float, p)) for p in poly], fill=255, outline=255)
        out[np.asarray(mask) > 0] = 0
    else:
        for x1, y1, x2, y2 in object_windows(det, w, h):
            out[y1:y2, x1:x2] = 0
    return out


def crop_objects(
    ds: Dataset,
    out_dir: str | Path,
    *,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, Any]:
    """Write every object crop (one folder per class) and every blacked-out background.

    Args:
        ds: the dataset.
        out_dir: output folder (created); see the module docstring for the layout.
        progress: optional wrapper around the image iteration (e.g. a progress bar).

    Returns:
        A summary: ``{"objects": n crops written, "backgrounds": n images, "skipped": n
        empty boxes, "per_class": {class name: n crops}}``.
    """
    out = Path(out_dir)
    names = unique_names(ds.samples)
    class_dirs = [safe_name(c) for c in ds.class_names]
    per_class: dict[str, int] = {}
    n_obj = skipped = 0
    (out / "backgrounds").mkdir(parents=True, exist_ok=True)
    items: Iterable[int] = range(len(ds))
    for i in progress(items) if progress is not None else items:
        s = ds.samples[i]
        img = s.load_image()
        h, w = img.shape[:2]
        det = s.detections
        for k, ((x1, y1, x2, y2), label) in enumerate(
                zip(object_windows(det, w, h), det.labels.tolist(), strict=True)):
            if x2 <= x1 or y2 <= y1:
                skipped += 1
                continue
            cls = (ds.class_names[label] if 0 <= label < len(ds.class_names) else str(label))
            folder = out / "objects" / (class_dirs[label] if 0 <= label < len(class_dirs)
                                        else safe_name(cls))
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(folder / f"{names[i]}_{k}.png",
                               encode_png(np.ascontiguousarray(img[y1:y2, x1:x2])))
            per_class[cls] = per_class.get(cls, 0) + 1
            n_obj += 1
        write_bytes_atomic(out / "backgrounds" / f"{names[i]}.png", encode_png(black_out(img, det)))
    return {"objects": n_obj, "backgrounds": len(ds), "skipped": skipped,
            "per_class": per_class}


__all__ = ["crop_objects", "black_out", "object_windows"]
