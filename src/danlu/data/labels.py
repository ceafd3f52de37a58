"""Remove labels on purpose: simulate missing annotations, or drop small objects.

* :func:`drop_labels` removes an exact fraction of each class's boxes at random and records
  which ones, to study training with missing labels;
* :func:`filter_small` removes boxes smaller than an area (by default the dataset's mean).

Both return a new :class:`Dataset` (new ``Sample`` objects sharing the images) and leave the
input unchanged.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> boxes = np.array([[0, 0, 4, 4], [0, 0, 10, 10], [0, 0, 2, 2], [0, 0, 8, 8]])
    >>> ds = Dataset([Sample(None, 16, 16, Detections(boxes, [0, 0, 1, 1]), id="a")], ["x", "y"])
    >>> len(drop_labels(ds, 0.5, seed=0)[0].detections)  # one box of each class dropped
    2
    >>> filter_small(ds)[0].detections.area.tolist()  # mean area is 46
    [100.0, 64.0]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections


def _round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def _with_detections(ds: Dataset, dets: list[Detections], meta_key: str,
                     info: dict[str, Any]) -> Dataset:
    samples = [dataclasses.replace(s, detections=d, meta=dict(s.meta))
               for s, d in zip(ds.samples, dets, strict=True)]
    meta = dict(ds.meta)
    meta[meta_key] = info
    return Dataset(samples, ds.class_names, meta)


def _key(sample_id: Any, index: int) -> Any:
    return sample_id if sample_id is not None else index


def drop_labels(ds: Dataset, rate: float, seed: int = 0, *, per_class: bool = True) -> Dataset:
    """Drop a random ``rate`` of the boxes: exactly ``round(rate * n)`` of each class.

    Args:
        ds: the dataset.
        rate: fraction of boxes to drop, in ``[0, 1]``.
        seed: seed of the choice; the same seed drops the same boxes.
        per_class: count ``n`` per class (each class loses the same fraction) when True, over
            all boxes together when False. Rounding is half up: ``floor(rate * n + 0.5)``.

    Returns:
        A new dataset without the dropped boxes. ``meta["dropped"]`` holds ``"indices"``:
        ``{sample id: [indices of the dropped boxes in the original Detections]}`` (samples
        that lost nothing are absent; a sample without an id is keyed by its position),
        ``"emptied"``: the ids of images that had boxes and have none left, and ``"rate"``,
        ``"seed"``, ``"per_class"``, ``"counts"`` (``{class name: dropped}``).
    """
    if not 0.0 <= rate <= 1.0:
        raise ConfigError(f"rate must be in [0, 1], got {rate}")
    lens = [len(s.detections) for s in ds]
    owner = np.repeat(np.arange(len(ds)), lens)
    labels = (np.concatenate([s.detections.labels for s in ds]) if len(owner)
              else np.zeros(0, np.int64))
    rng = np.random.default_rng(seed)
    drop = np.zeros(len(labels), bool)
    groups = np.unique(labels) if per_class else np.zeros(1, np.int64)
    for g in groups:
        members = np.flatnonzero(labels == g) if per_class else np.arange(len(labels))
        k = _round_half_up(rate * len(members))
        drop[rng.choice(members, size=k, replace=False)] = True
    starts = np.concatenate([[0], np.cumsum(lens)])
    dets, dropped, emptied = [], {}, []
    for i, s in enumerate(ds.samples):
        d = drop[starts[i]:starts[i + 1]]
        dets.append(s.detections[~d])
        if d.any():
            dropped[_key(s.id, i)] = np.flatnonzero(d).tolist()
            if d.all():
                emptied.append(_key(s.id, i))
    names = ds.class_names
    counts = {(names[c] if 0 <= c < len(names) else str(c)): int((drop & (labels == c)).sum())
              for c in np.unique(labels).tolist()}
    info = {"indices": dropped, "emptied": emptied, "rate": float(rate), "seed": int(seed),
            "per_class": per_class, "counts": counts}
    return _with_detections(ds, dets, "dropped", info)


def filter_small(ds: Dataset, min_area: float | None = None) -> Dataset:
    """Remove boxes whose area is below ``min_area`` (default: the mean box area of ``ds``).

    Areas are ``xyxy`` areas in pixels, ``(x2 - x1) * (y2 - y1)``; a box exactly at the
    threshold is kept.

    Returns:
        A new dataset; ``meta["filter_small"]`` holds ``"min_area"`` (the threshold used) and
        ``"removed"`` (how many boxes went).
    """
    areas = [s.detections.area.astype(np.float64) for s in ds]
    if min_area is None:
        allareas = np.concatenate(areas) if areas else np.zeros(0)
        min_area = float(allareas.mean()) if len(allareas) else 0.0
    dets = [s.detections[a >= min_area] for s, a in zip(ds.samples, areas, strict=True)]
    removed = ds.num_boxes - sum(len(d) for d in dets)
    return _with_detections(ds, dets, "filter_small",
                            {"min_area": float(min_area), "removed": int(removed)})


__all__ = ["drop_labels", "filter_small"]
