"""What a format's writer cannot hold: one line per kind of loss, with its count.

Writing a dataset in another format keeps what the target holds and nothing more. Rather
than drop the rest in silence, :func:`conversion_losses` names each kind of loss before the
write: per-box flags the target has no place for (counted where they are true), scores,
oriented boxes written as their axis-aligned enclosing box (counted where the polygon is not
already that box), and class names the target rewrites (DOTA: no spaces).

What each writer holds (danlu's writers, as read back by danlu's readers):

======== ============================================ ======== =========== =================
format   flags                                        scores   oriented    class names
======== ============================================ ======== =========== =================
voc      ``difficult``, ``truncated``, ``occluded``   no       no          any
coco     all (``iscrowd``, the rest as attributes)    yes      no          any
yolo     none                                         yes      no          any
yolo-obb none                                         yes      yes         any
dota     ``difficult``                                no       yes         no spaces (``-``)
labelme  all (shape flags)                            no       yes         any
cvat     all (``occluded``, checkbox attributes)      yes      yes         any
======== ============================================ ======== =========== =================

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> det = Detections(np.array([[0, 0, 8, 8]]), np.array([0]),
    ...                  flags={"difficult": np.array([True])})
    >>> ds = Dataset([Sample(None, 16, 16, det)], ["potted plant"])
    >>> for line in conversion_losses(ds, "dota"):
    ...     print(line)
    DOTA class names cannot hold spaces: 1 class renamed ('potted plant' -> 'potted-plant')
    >>> conversion_losses(ds, "yolo")
    ["YOLO holds no per-box flags: 'difficult' dropped on 1 of 1 boxes"]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from danlu.structures import Dataset


@dataclass(frozen=True)
class Holds:
    """What a writer keeps: ``flags`` (None: every flag), ``scores``, ``oriented`` (4-point
    polygons), and ``rename`` (how it rewrites a class name; None keeps every name)."""

    title: str
    flags: frozenset[str] | None
    scores: bool
    oriented: bool
    rename: Callable[[str], str] | None = None


def _dota_name(name: str) -> str:
    return name.replace(" ", "-")


HOLDS: dict[str, Holds] = {
    "voc": Holds("VOC", frozenset({"difficult", "truncated", "occluded"}), False, False),
    "coco": Holds("COCO", None, True, False),
    "yolo": Holds("YOLO", frozenset(), True, False),
    "yolo-obb": Holds("YOLO OBB", frozenset(), True, True),
    "dota": Holds("DOTA", frozenset({"difficult"}), False, True, _dota_name),
    "labelme": Holds("LabelMe", None, False, True),
    "cvat": Holds("CVAT", None, True, True),
}

_KEEP_ORIENTED = "dota, yolo-obb, labelme and cvat keep them"


def oriented_count(ds: Dataset) -> int:
    """The number of boxes whose polygon is not their axis-aligned enclosing box (to 1e-3 px):
    the boxes a writer without orientation changes."""
    n = 0
    for s in ds.samples:
        p = s.detections.polygons
        if p is None or not len(p):
            continue
        p = np.asarray(p, np.float64).reshape(-1, 4, 2)
        lo, hi = p.min(axis=1, keepdims=True), p.max(axis=1, keepdims=True)
        # the box itself, from any corner and in either direction: every corner is a corner
        # of the box and the areas agree (which rules out a self-crossing order)
        on_corner = ((np.abs(p - lo) <= 1e-3) | (np.abs(p - hi) <= 1e-3)).all(axis=(1, 2))
        x, y = p[..., 0], p[..., 1]
        area = 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(axis=1))
        box_area = np.prod(hi - lo, axis=-1).reshape(-1)
        same = on_corner & (np.abs(area - box_area) <= 1e-3 * (1 + box_area))
        n += int((~same).sum())
    return n


def conversion_losses(ds: Dataset, to: str) -> list[str]:
    """One line per kind of information the ``to`` writer drops or changes, with counts.

    Args:
        ds: the dataset about to be written.
        to: the target format name (a key of :data:`HOLDS`; other names give ``[]``).

    Returns:
        Lines such as ``"VOC holds no scores: 40 scores dropped"``, in a fixed order: flags,
        scores, oriented boxes, class names. Empty when nothing is lost.
    """
    holds = HOLDS.get(to.lower())
    if holds is None:
        return []
    total = ds.num_boxes
    out = []
    true_counts: dict[str, int] = {}
    for s in ds.samples:
        for k, v in s.detections.flags.items():
            true_counts[k] = true_counts.get(k, 0) + int(np.count_nonzero(v))
    dropped = {k: c for k, c in sorted(true_counts.items())
               if c and holds.flags is not None and k not in holds.flags}
    if dropped:
        what = ", ".join(f"{k!r} dropped on {c} of {total} boxes" for k, c in dropped.items())
        kept = (f"keeps only {', '.join(sorted(holds.flags))}" if holds.flags
                else "holds no per-box flags")
        out.append(f"{holds.title} {kept}: {what}")
    if not holds.scores:
        n = sum(len(s.detections) for s in ds.samples if s.detections.scores is not None)
        if n:
            out.append(f"{holds.title} holds no scores: {n} scores dropped")
    if not holds.oriented and (n := oriented_count(ds)):
        out.append(f"{holds.title} holds no oriented boxes: {n} written as their axis-aligned "
                   f"enclosing boxes ({_KEEP_ORIENTED})")
    if holds.rename is not None:
        renamed = [(c, holds.rename(c)) for c in ds.class_names if holds.rename(c) != c]
        if renamed:
            shown = ", ".join(f"{a!r} -> {b!r}" for a, b in renamed[:5])
            more = f" and {len(renamed) - 5} more" if len(renamed) > 5 else ""
            word = "class" if len(renamed) == 1 else "classes"
            out.append(f"{holds.title} class names cannot hold spaces: {len(renamed)} {word} "
                       f"renamed ({shown}{more})")
        after = [holds.rename(c) for c in ds.class_names]
        if len(set(after)) < len(after):
            clash = sorted({a for a in after if after.count(a) > 1})
            out.append(f"{holds.title}: after renaming, classes share a name and will merge "
                       f"when read back: {', '.join(map(repr, clash))}")
    return out


__all__ = ["conversion_losses", "oriented_count", "HOLDS", "Holds"]
