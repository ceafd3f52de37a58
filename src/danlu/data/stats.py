"""Dataset statistics: counts, histograms and the boxes worth a second look.

Sizes follow COCO's area ranges: small ``area < 32**2``, medium ``< 96**2``, large otherwise
(area of the continuous ``xyxy`` box). A box is *degenerate* when its width or height is
<= 0, *out of bounds* when it extends past the image (by more than 1e-3 px), and a
*duplicate* when an earlier box on the same image has the same label and the same
coordinates (to 1e-3 px).

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> det = Detections(np.array([[0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 200, 90]]),
    ...                  np.array([0, 0, 1]))
    >>> s = dataset_stats(Dataset([Sample(None, 100, 100, det)], ["cat", "dog"]))
    >>> s["num_boxes"], s["duplicate_boxes"], s["out_of_bounds_boxes"], s["coco_area"]
    (3, 1, 1, {'small': 2, 'medium': 0, 'large': 1})
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from danlu.data._atomic import write_bytes_atomic
from danlu.structures import Dataset

SIZE_BINS = [0, 8, 16, 32, 64, 96, 128, 256, 512, 1024, float("inf")]
ASPECT_BINS = [0, 1 / 8, 1 / 4, 1 / 2, 1 / 1.5, 1.5, 2, 4, 8, float("inf")]
PER_IMAGE_BINS = [0, 1, 2, 3, 5, 10, 20, 50, 100, float("inf")]


def _hist(values: np.ndarray, edges: list[float]) -> dict[str, Any]:
    counts, _ = np.histogram(values, bins=np.asarray(edges, np.float64))
    names = [f"[{_edge(a)}, {_edge(b)})" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return {"bins": names, "edges": [e if np.isfinite(e) else None for e in edges],
            "counts": counts.tolist()}


def _edge(v: float) -> str:
    if not np.isfinite(v):
        return "inf"
    return f"{v:g}" if v >= 1 or v == 0 else f"1/{1 / v:g}"


def _summary(values: np.ndarray) -> dict[str, float | None]:
    if not len(values):
        return {"min": None, "max": None, "mean": None, "median": None}
    return {"min": float(values.min()), "max": float(values.max()),
            "mean": float(values.mean()), "median": float(np.median(values))}


def dataset_stats(ds: Dataset) -> dict[str, Any]:
    """Statistics of a dataset, as a JSON-friendly dict.

    Returns:
        ``num_images``, ``num_boxes``, ``num_classes``, ``per_class`` (name -> ``{"boxes",
        "images"}``), ``boxes_per_image`` (summary + histogram), ``empty_images``,
        ``image_sizes`` (the 10 most common ``WxH`` and width/height summaries),
        ``box_size`` (sqrt of the box area: summary + histogram), ``aspect_ratio`` (w / h:
        histogram), ``coco_area`` (small / medium / large counts), ``duplicate_boxes``,
        ``degenerate_boxes``, ``out_of_bounds_boxes``, ``flags`` (name -> count of True),
        ``warnings`` (how many the reader collected).
    """
    k = len(ds.class_names)
    n_img = len(ds)
    counts = np.fromiter((len(s.detections) for s in ds.samples), np.int64, n_img)
    dets = [s.detections for s in ds.samples]
    if counts.sum():
        xyxy = np.concatenate([d.xyxy for d in dets]).astype(np.float64)
        labels = np.concatenate([d.labels for d in dets])
    else:
        xyxy, labels = np.zeros((0, 4)), np.zeros(0, np.int64)
    img_of = np.repeat(np.arange(n_img), counts)
    wh_img = np.asarray([(s.width, s.height) for s in ds.samples], np.float64).reshape(-1, 2)
    bw = xyxy[:, 2] - xyxy[:, 0]
    bh = xyxy[:, 3] - xyxy[:, 1]
    area = np.clip(bw, 0, None) * np.clip(bh, 0, None)
    degenerate = (bw <= 0) | (bh <= 0)
    wh = wh_img[img_of]
    oob = ((xyxy[:, 0] < -1e-3) | (xyxy[:, 1] < -1e-3) | (xyxy[:, 2] > wh[:, 0] + 1e-3)
           | (xyxy[:, 3] > wh[:, 1] + 1e-3))
    # duplicates: same image, label and coordinates (rounded to 1e-3 px)
    dup = 0
    if len(xyxy):
        key = np.concatenate([img_of[:, None].astype(np.float64), labels[:, None],
                              np.round(xyxy * 1000)], axis=1)
        dup = len(key) - len(np.unique(key, axis=0))
    box_count = np.bincount(labels[(labels >= 0) & (labels < k)], minlength=k)
    img_count = np.zeros(k, np.int64)
    if len(labels):
        pairs = np.unique(np.stack([img_of, labels], 1)[(labels >= 0) & (labels < k)], axis=0)
        img_count = np.bincount(pairs[:, 1], minlength=k) if len(pairs) else img_count
    valid = ~degenerate
    aspect = bw[valid] / bh[valid]
    sizes: dict[str, int] = {}
    for w, h in wh_img.astype(np.int64).tolist():
        key_s = f"{w}x{h}"
        sizes[key_s] = sizes.get(key_s, 0) + 1
    flag_counts: dict[str, int] = {}
    for d in dets:
        for name, v in d.flags.items():
            flag_counts[name] = flag_counts.get(name, 0) + int(v.sum())
    return {
        "num_images": n_img,
        "num_boxes": int(counts.sum()),
        "num_classes": k,
        "class_names": list(ds.class_names),
        "per_class": {name: {"boxes": int(box_count[i]), "images": int(img_count[i])}
                      for i, name in enumerate(ds.class_names)},
        "boxes_per_image": {**_summary(counts.astype(np.float64)),
                            "histogram": _hist(counts, PER_IMAGE_BINS)},
        "empty_images": int((counts == 0).sum()),
        "image_sizes": {"most_common": dict(sorted(sizes.items(), key=lambda t: -t[1])[:10]),
                        "width": _summary(wh_img[:, 0]), "height": _summary(wh_img[:, 1])},
        "box_size": {**_summary(np.sqrt(area)), "histogram": _hist(np.sqrt(area), SIZE_BINS)},
        "aspect_ratio": {**_summary(aspect), "histogram": _hist(aspect, ASPECT_BINS)},
        "coco_area": {"small": int((area < 32 ** 2).sum()),
                      "medium": int(((area >= 32 ** 2) & (area < 96 ** 2)).sum()),
                      "large": int((area >= 96 ** 2).sum())},
        "duplicate_boxes": int(dup),
        "degenerate_boxes": int(degenerate.sum()),
        "out_of_bounds_boxes": int(oob.sum()),
        "flags": flag_counts,
        "warnings": len(ds.meta.get("warnings", []) or []),
    }


def plot_stats(stats: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Draw the statistics of :func:`dataset_stats` as one PNG (matplotlib, Agg backend):
    boxes per class, boxes per image, box sizes and aspect ratios. Written atomically."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 8), dpi=100)
    axes = fig.subplots(2, 2)
    per = stats["per_class"]
    names = list(per)
    ax = axes[0][0]
    ax.bar(range(len(names)), [per[n]["boxes"] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7 if len(names) > 20 else 9)
    ax.set_title(f"boxes per class ({stats['num_boxes']} boxes, {stats['num_images']} images)")
    for ax, key, title in ((axes[0][1], "boxes_per_image", "boxes per image"),
                           (axes[1][0], "box_size", "box size sqrt(area) px"),
                           (axes[1][1], "aspect_ratio", "aspect ratio w/h")):
        h = stats[key]["histogram"]
        ax.bar(range(len(h["counts"])), h["counts"], color="tab:orange")
        ax.set_xticks(range(len(h["bins"])))
        ax.set_xticklabels(h["bins"], rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())


__all__ = ["dataset_stats", "plot_stats"]
