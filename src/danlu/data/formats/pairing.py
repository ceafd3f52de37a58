"""Which ground-truth image each predicted image is: by file name or by id, never by position.

A prediction file names its images one of two ways, and :func:`pair_images` pairs them by
that and nothing else:

* **by name** (``by="name"``: a COCO result's ``file_name``, the ``path`` of ``danlu
  predict``'s ``predictions.json``, the image names of DOTA Task1/Task2 result files, the
  label files of a YOLO or other dataset folder): a name is matched against the ground
  truth's image paths, first as a whole relative path (``val/a.jpg`` matches
  ``/data/images/val/a.jpg``), then by base name (``a.jpg``), then by file stem (``a``: DOTA
  names images by stem). The first of these that matches anything decides: a name that
  matches several images there (two ``a.jpg`` in different folders) is ambiguous.
* **by id** (``by="id"``: a COCO result's ``image_id``): an integer id is matched against
  the ground truth's own integer ids (``Sample.id`` of a COCO ground truth). A ground truth
  without them (VOC, YOLO, DOTA: ``Sample.id`` is the file stem) cannot be paired with
  integer ids: they would be positions in someone's list of the images, and which list is
  not known. That is an error, whatever ``skip_invalid`` says. A string ``image_id`` is
  matched against string ids (a VOC/YOLO/DOTA id is the file stem), then as a name.

A predicted image that matches no ground-truth image, one that is ambiguous, and a second
one that pairs with an image already taken are errors naming the first few; with
``skip_invalid`` they are skipped and counted in one warning each. Predicted images without
a single detection are never an error.

How the classes were mapped is the reader's to say (``classes``: ``"name"``, ``"id"`` or
``"index"``); :func:`pairing_meta` puts both into ``Dataset.meta["pairing"]`` and
:func:`describe_pairing` says it in one line, as ``danlu eval`` prints it.

Example:
    >>> from danlu.structures import Dataset, Sample
    >>> from danlu.data.formats._common import ReadContext
    >>> gt = Dataset([Sample("/d/JPEGImages/a.jpg", 8, 8, id="a"),
    ...               Sample("/d/JPEGImages/b.jpg", 8, 8, id="b")], ["cat"])
    >>> pair_images(["b.jpg", "JPEGImages/a.jpg"], "name", gt, "p.json", ReadContext()).index
    [1, 0]
    >>> pair_images([1, 2], "id", gt, "p.json", ReadContext())
    Traceback (most recent call last):
    ...
    danlu.errors.DatasetError: p.json: the predictions name images by integer id (image_id), \
the ground truth by file name only (its images have no integer ids): pairing them would be \
a guess
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from danlu.data.formats._common import ReadContext, file_stem
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections

_SHOWN = 5  # offenders named in a message


@dataclass
class Pairing:
    """For each predicted image (in the order given), the index of its ground-truth sample,
    -1 when it has none; ``how`` counts the pairs made at each level (``"id"``, ``"path"``,
    ``"file name"``, ``"stem"``)."""

    index: list[int]
    by: str
    how: dict[str, int] = field(default_factory=dict)

    @property
    def images(self) -> str:
        """``"id"`` when every pair was made by id (or, none made, the file names images by
        id), else ``"file name"``."""
        if not self.how:
            return "id" if self.by == "id" else "file name"
        return "id" if set(self.how) == {"id"} else "file name"


@dataclass
class PredictedImages:
    """What a predictions reader found: each image's key as the file names it (an ``int``
    id, or a ``str`` name or id) and its detections (labels already the ground truth's),
    how the file names images (``by``) and how its classes were mapped (``classes``), and
    the pairing when the reader needed it early (to read sizes, or to order rows)."""

    keys: list[Any]
    detections: list[Detections | None]
    by: str
    classes: str
    pairing: Pairing | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def pair_images(keys: Sequence[Any], by: str, gt: Dataset, src: str, ctx: ReadContext,
                nonempty: Sequence[bool] | None = None) -> Pairing:
    """Pair each of ``keys`` (the images of a prediction file, ``by`` ``"name"`` or
    ``"id"``) with a sample of ``gt`` as the module docstring says.

    Args:
        keys: distinct image keys; ``int`` ids and ``str`` names or ids.
        by: ``"name"`` or ``"id"``.
        gt: the ground truth.
        src: the prediction file, for messages.
        ctx: ``skip_invalid`` and the warnings.
        nonempty: for each key, whether it has detections (an unknown image without any is
            not an error); all True when None.

    Raises:
        DatasetError: integer ids against a ground truth without integer ids, or ground-truth
            ids that repeat (always); unknown, ambiguous or repeated images (unless
            ``ctx.skip_invalid``).
    """
    index = [-1] * len(keys)
    level: list[str] = [""] * len(keys)
    unknown: list[Any] = []
    ambiguous: list[str] = []
    is_int = [isinstance(k, int) and not isinstance(k, bool) for k in keys]
    by_id = _integer_ids(gt, src) if any(is_int) else {}
    names = _Names(gt) if not all(is_int) else None
    for i, k in enumerate(keys):
        if is_int[i]:
            found, lv = ([by_id[k]] if k in by_id else []), "id"
        else:
            assert names is not None
            found, lv = names.find(str(k), by == "id")
        if len(found) == 1:
            index[i], level[i] = found[0], lv
        elif nonempty is not None and not nonempty[i]:
            continue
        elif found:
            ambiguous.append(f"{str(k)!r} ({len(found)} images by {lv})")
        else:
            unknown.append(k)
    _report_unknown(unknown, gt, src, ctx)
    if ambiguous:
        ctx.fail(f"{src}: {len(ambiguous)} predicted image names match several ground-truth "
                 f"images: {_first(ambiguous)}",
                 hint="name each image by its path relative to the ground-truth folder")
    _drop_repeats(keys, index, src, ctx)
    how: dict[str, int] = {}
    for j, lv in zip(index, level, strict=True):
        if j >= 0:
            how[lv] = how.get(lv, 0) + 1
    return Pairing(index, by, how)


def _integer_ids(gt: Dataset, src: str) -> dict[int, int]:
    """``{id: sample index}`` of a ground truth whose samples all have integer ids."""
    by_id: dict[int, int] = {}
    for j, s in enumerate(gt.samples):
        i = s.id
        if not isinstance(i, int) or isinstance(i, bool):
            fmt = gt.meta.get("format")
            raise DatasetError(
                f"{src}: the predictions name images by integer id (image_id), the ground "
                f"truth{f' ({fmt})' if fmt else ''} by file name only (its images have no "
                "integer ids): pairing them would be a guess",
                hint="write each result's image file name into it (\"file_name\": "
                     "\"a.jpg\", beside or instead of image_id), or evaluate against the "
                     "COCO json whose image ids the results use (--gt that.json)")
        if by_id.setdefault(i, j) != j:
            raise DatasetError(f"{src}: ground-truth image id {i} belongs to two images "
                               f"(samples {by_id[i]} and {j}): integer ids cannot pair them",
                               hint="give every ground-truth image its own id")
    return by_id


class _Names:
    """The ground truth's images by string id, base name and stem, for :meth:`find`."""

    def __init__(self, gt: Dataset) -> None:
        self.paths: list[str | None] = []
        self.by_id: dict[str, list[int]] = {}
        self.by_base: dict[str, list[int]] = {}
        self.by_stem: dict[str, list[int]] = {}
        for j, s in enumerate(gt.samples):
            if isinstance(s.id, str):
                self.by_id.setdefault(s.id, []).append(j)
            path = _norm(os.fspath(s.image)) if isinstance(s.image, (str, Path)) else None
            self.paths.append(path)
            if path:
                base = path.rpartition("/")[2]
                self.by_base.setdefault(base, []).append(j)
                self.by_stem.setdefault(file_stem(base), []).append(j)

    def find(self, key: str, as_id: bool) -> tuple[list[int], str]:
        """The samples ``key`` names and the level that decided (module docstring)."""
        if as_id and key in self.by_id:
            return self.by_id[key], "id"
        name = _norm(key)
        base = name.rpartition("/")[2]
        same_base = self.by_base.get(base, [])
        if "/" in name:
            whole = [j for j in same_base if self.paths[j] == name
                     or (self.paths[j] or "").endswith("/" + name.lstrip("/"))]
            if whole:
                return whole, "path"
        if same_base:
            return same_base, "file name"
        return self.by_stem.get(file_stem(base), []), "stem"


def _norm(path: str) -> str:
    """A path as ``/``-separated text without leading ``./`` and ``../`` parts."""
    path = path.replace("\\", "/")
    while path.startswith(("./", "../")):
        path = path.split("/", 1)[1]
    return path


def _first(items: Sequence[str]) -> str:
    """The first few of ``items`` (already worded), and how many more."""
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _report_unknown(unknown: list[Any], gt: Dataset, src: str, ctx: ReadContext) -> None:
    if not unknown:
        return
    if all(isinstance(k, int) for k in unknown):
        known = [s.id for s in gt.samples[:3]]
        hint = f"the ground truth's image ids are {known}{' ...' if len(gt) > 3 else ''}"
    else:
        known = [Path(os.fspath(s.image)).name if isinstance(s.image, (str, Path)) else s.id
                 for s in gt.samples[:3]]
        hint = f"the ground truth's images are {known}{' ...' if len(gt) > 3 else ''}"
    ctx.fail(f"{src}: predictions for {len(unknown)} images that are not in the ground truth: "
             f"{_first([repr(k) for k in unknown])}",
             hint=hint + "; evaluate against the ground truth the predictions were made for")


def _drop_repeats(keys: Sequence[Any], index: list[int], src: str, ctx: ReadContext) -> None:
    """A second predicted image paired with a sample already taken is unpaired (and an
    error, or a warning with ``skip_invalid``)."""
    taken: dict[int, int] = {}
    repeats = []
    for i, j in enumerate(index):
        if j < 0:
            continue
        first = taken.setdefault(j, i)
        if first != i:
            repeats.append(f"{keys[i]!r} and {keys[first]!r}")
            index[i] = -1
    if repeats:
        ctx.fail(f"{src}: {len(repeats)} ground-truth images are named twice in the "
                 f"predictions: {_first(repeats)}", hint="give each image's predictions once")


def pairing_meta(pairing: Pairing, classes: str, notes: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """What goes into ``Dataset.meta["pairing"]``: ``images`` (``"file name"`` or ``"id"``),
    ``classes`` (``"name"``, ``"id"`` or ``"index"``), ``paired`` (predicted images paired),
    ``levels`` (pairs made at each level), and the reader's notes."""
    paired = sum(1 for j in pairing.index if j >= 0)
    return {"images": pairing.images, "classes": classes, "paired": paired,
            "levels": dict(pairing.how),
            **(notes or {})}


_CLASSES = {"name": "classes by name", "id": "classes by category id",
            "index": "classes by index into the ground truth's class list"}


def describe_pairing(meta: dict[str, Any]) -> str:
    """One line saying how predictions were paired (``meta``: ``Dataset.meta["pairing"]``).

    Example:
        >>> describe_pairing({"images": "file name", "classes": "name", "paired": 6})
        'paired 6 predicted images by file name, classes by name'
    """
    classes = _CLASSES.get(meta.get("classes", ""), f"classes by {meta.get('classes')}")
    if meta.get("classes") == "id" and meta.get("category_ids") == "1..K":
        classes += " (1..K in the ground truth's class order)"
    return f"paired {meta.get('paired', 0)} predicted images by {meta.get('images')}, {classes}"


__all__ = ["Pairing", "PredictedImages", "pair_images", "pairing_meta", "describe_pairing"]
