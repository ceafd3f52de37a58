"""The shared vocabulary of every stage: :class:`Detections`, :class:`Sample`, :class:`Dataset`.

Conventions (the only ones inside danlu; other conventions live in readers and writers):

* boxes are absolute pixel coordinates ``xyxy``, continuous: area = (x2 - x1) * (y2 - y1), no +1;
* oriented boxes are 4-point polygons ``[N, 4, 2]`` (DOTA order: x1 y1 ... x4 y4), and their
  ``xyxy`` is the enclosing axis-aligned box;
* ground truth and predictions are the same type; predictions carry ``scores``.

Example:
    >>> import numpy as np
    >>> d = Detections(np.array([[0, 0, 10, 10], [5, 5, 20, 20]]), np.array([0, 1]),
    ...                scores=np.array([0.9, 0.3]))
    >>> len(d), d.area.tolist()
    (2, [100.0, 225.0])
    >>> d.filter(min_score=0.5).labels.tolist()
    [0]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from danlu.errors import DatasetError

if TYPE_CHECKING:
    import torch

ImageRef = str | Path | bytes | np.ndarray


def _as_array(value: Any, dtype: Any, name: str) -> np.ndarray:
    """Convert ``value`` (array-like or torch tensor) to a numpy array of ``dtype``."""
    if hasattr(value, "detach"):  # torch tensor, without importing torch
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=dtype)
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


class Detections:
    """Boxes with labels, optional scores, polygons and per-box flags; all arrays of length N.

    Args:
        xyxy: ``[N, 4]`` boxes, absolute pixels, stored as float32. May be None when
            ``polygons`` is given: the enclosing boxes of the polygons are used.
        labels: ``[N]`` class indices (0-based, into ``Dataset.class_names``), stored as int64.
        scores: ``[N]`` confidences stored as float32, or None for ground truth.
        polygons: ``[N, 4, 2]`` oriented boxes (float32), or None for axis-aligned boxes.
        flags: per-box booleans, e.g. ``{"difficult": ..., "iscrowd": ..., "ignore": ...}``.
        extra: other per-box arrays of length N (e.g. COCO ``"area"``, a pseudo-label source).

    Indexing with a boolean mask, an index array, a slice or an int returns a new
    ``Detections`` (an int gives one of length 1). Arrays are not copied on construction.
    """

    __slots__ = ("xyxy", "labels", "scores", "polygons", "flags", "extra")

    def __init__(
        self,
        xyxy: Any | None,
        labels: Any,
        scores: Any | None = None,
        polygons: Any | None = None,
        flags: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if polygons is not None:
            polygons = _as_array(polygons, np.float32, "polygons").reshape(-1, 4, 2)
        if xyxy is None:
            if polygons is None:
                raise ValueError("Detections needs xyxy or polygons")
            xyxy = polygons_to_enclosing_xyxy(polygons)
        self.xyxy = _as_array(xyxy, np.float32, "xyxy").reshape(-1, 4)
        n = len(self.xyxy)
        self.labels = _as_array(labels, np.int64, "labels").reshape(-1)
        self.scores = (None if scores is None
                       else _as_array(scores, np.float32, "scores").reshape(-1))
        self.polygons = polygons
        self.flags = {k: _as_array(v, bool, k).reshape(-1) for k, v in (flags or {}).items()}
        self.extra = {k: _as_array(v, None, k) for k, v in (extra or {}).items()}
        for name, arr in self._arrays():
            if len(arr) != n:
                raise ValueError(f"Detections: {name} has length {len(arr)}, xyxy has {n}")

    def _arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        yield "labels", self.labels
        if self.scores is not None:
            yield "scores", self.scores
        if self.polygons is not None:
            yield "polygons", self.polygons
        for k, v in self.flags.items():
            yield f"flags[{k!r}]", v
        for k, v in self.extra.items():
            yield f"extra[{k!r}]", v

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def empty(cls, *, with_scores: bool = False, oriented: bool = False) -> Detections:
        """A ``Detections`` of length 0 (with an empty ``scores`` / ``polygons`` if asked)."""
        return cls(
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.int64),
            scores=np.zeros(0, np.float32) if with_scores else None,
            polygons=np.zeros((0, 4, 2), np.float32) if oriented else None,
        )

    @classmethod
    def concat(cls, items: Iterable[Detections]) -> Detections:
        """Concatenate along N. Scores, polygons, flags and extras must be present in all or none.

        A flag present in only some parts is filled with False elsewhere.
        """
        items = list(items)
        if not items:
            return cls.empty()
        if len(items) == 1:
            return items[0]
        has_scores = {d.scores is not None for d in items}
        has_polys = {d.polygons is not None for d in items}
        if len(has_scores) > 1 or len(has_polys) > 1:
            raise ValueError("Detections.concat: mixing items with and without scores/polygons")
        flag_names = sorted({k for d in items for k in d.flags})
        extra_names = [k for k in items[0].extra if all(k in d.extra for d in items)]
        return cls(
            np.concatenate([d.xyxy for d in items]),
            np.concatenate([d.labels for d in items]),
            scores=np.concatenate([d.scores for d in items]) if items[0].scores is not None
            else None,
            polygons=np.concatenate([d.polygons for d in items]) if items[0].polygons is not None
            else None,
            flags={k: np.concatenate([d.flags.get(k, np.zeros(len(d), bool)) for d in items])
                   for k in flag_names},
            extra={k: np.concatenate([d.extra[k] for d in items]) for k in extra_names},
        )

    @classmethod
    def from_torch(cls, boxes: torch.Tensor | Mapping[str, torch.Tensor],
                   labels: torch.Tensor | None = None,
                   scores: torch.Tensor | None = None) -> Detections:
        """Build from tensors, or from a torchvision detection dict (``boxes``, ``labels``,
        optional ``scores``) as its detectors return and take as targets."""
        if isinstance(boxes, Mapping):
            d = boxes
            return cls(d["boxes"], d["labels"], scores=d.get("scores"))
        if labels is None:
            raise ValueError("Detections.from_torch needs labels")
        return cls(boxes, labels, scores=scores)

    # -- basic protocol -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Any) -> Detections:
        if isinstance(index, (int, np.integer)):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        elif hasattr(index, "detach"):
            index = index.detach().cpu().numpy()
        return Detections(
            self.xyxy[index],
            self.labels[index],
            scores=None if self.scores is None else self.scores[index],
            polygons=None if self.polygons is None else self.polygons[index],
            flags={k: v[index] for k, v in self.flags.items()},
            extra={k: v[index] for k, v in self.extra.items()},
        )

    def __repr__(self) -> str:
        parts = [f"n={len(self)}"]
        if self.scores is not None:
            parts.append("scores")
        if self.polygons is not None:
            parts.append("oriented")
        if self.flags:
            parts.append("flags=" + ",".join(self.flags))
        return f"Detections({', '.join(parts)})"

    def _repr_html_(self) -> str:
        """The boxes as an HTML table (:func:`danlu.data.notebook.detections_html`)."""
        return _notebook().detections_html(self)

    def show(self, image: Any, class_names: Sequence[str] | None = None, *,
             max_side: int | None = 800) -> Any:
        """A Pillow image of ``image`` (array, Pillow image, path or bytes; boxes in its pixels)
        with these boxes drawn as ``danlu data show`` draws them, longest side at most
        ``max_side`` pixels (None: full size).

        Example:
            >>> d = Detections([[4, 4, 40, 30]], [1], scores=[0.9])
            >>> d.show(np.zeros((48, 64, 3), np.uint8), ["cat", "dog"]).size
            (64, 48)
        """
        return _notebook().show_image(image, self, class_names, max_side=max_side)

    # -- properties -----------------------------------------------------------------------
    @property
    def area(self) -> np.ndarray:
        """``[N]`` float32: (x2 - x1) * (y2 - y1) of ``xyxy`` (0 for inverted boxes)."""
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]

    @property
    def is_oriented(self) -> bool:
        """True when the boxes carry 4-point polygons."""
        return self.polygons is not None

    def flag(self, name: str) -> np.ndarray:
        """The boolean flag ``name`` (all False when absent)."""
        return self.flags.get(name, np.zeros(len(self), bool))

    # -- transforms -----------------------------------------------------------------------
    def filter(self, *, min_score: float | None = None,
               labels: Iterable[int] | None = None) -> Detections:
        """Keep boxes with ``score >= min_score`` (when scores exist) and a label in ``labels``."""
        keep = np.ones(len(self), bool)
        if min_score is not None and self.scores is not None:
            keep &= self.scores >= min_score
        if labels is not None:
            keep &= np.isin(self.labels, np.fromiter(labels, np.int64))
        return self[keep]

    def sort_by_score(self) -> Detections:
        """Sorted by decreasing score (stable: ties keep their order). Unchanged without scores."""
        if self.scores is None:
            return self
        return self[np.argsort(-self.scores, kind="stable")]

    def with_scores(self, scores: Any) -> Detections:
        """A copy with ``scores`` replaced."""
        d = self[slice(None)]
        d.scores = _as_array(scores, np.float32, "scores").reshape(-1)
        if len(d.scores) != len(d):
            raise ValueError("with_scores: length mismatch")
        return d

    def translate(self, dx: float, dy: float) -> Detections:
        """Boxes (and polygons) shifted by ``(dx, dy)`` pixels."""
        d = self[slice(None)]
        d.xyxy = self.xyxy + np.array([dx, dy, dx, dy], np.float32)
        if self.polygons is not None:
            d.polygons = self.polygons + np.array([dx, dy], np.float32)
        return d

    def scale(self, sx: float, sy: float) -> Detections:
        """Boxes (and polygons) multiplied by ``(sx, sy)``."""
        d = self[slice(None)]
        d.xyxy = self.xyxy * np.array([sx, sy, sx, sy], np.float32)
        if self.polygons is not None:
            d.polygons = self.polygons * np.array([sx, sy], np.float32)
        return d

    # -- torch ----------------------------------------------------------------------------
    def to_torch(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """A torchvision-style dict: ``boxes`` float32 [N,4], ``labels`` int64 [N], and
        ``scores`` / ``polygons`` / each flag when present, on ``device``."""
        import torch

        out = {"boxes": torch.from_numpy(self.xyxy).to(device),
               "labels": torch.from_numpy(self.labels).to(device)}
        if self.scores is not None:
            out["scores"] = torch.from_numpy(self.scores).to(device)
        if self.polygons is not None:
            out["polygons"] = torch.from_numpy(self.polygons).to(device)
        for k, v in self.flags.items():
            out[k] = torch.from_numpy(v).to(device)
        return out

    # -- comparison -----------------------------------------------------------------------
    def allclose(self, other: Detections, *, atol: float = 1e-4) -> bool:
        """True when both hold the same boxes, labels, scores, polygons and flags, in order."""
        return compare_detections(self, other, atol=atol) is None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of plain lists (the inverse of :meth:`from_dict`)."""
        out: dict[str, Any] = {"xyxy": self.xyxy.tolist(), "labels": self.labels.tolist()}
        if self.scores is not None:
            out["scores"] = self.scores.tolist()
        if self.polygons is not None:
            out["polygons"] = self.polygons.tolist()
        if self.flags:
            out["flags"] = {k: v.tolist() for k, v in self.flags.items()}
        if self.extra:
            out["extra"] = {k: v.tolist() for k, v in self.extra.items()}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Detections:
        """Build from :meth:`to_dict` output."""
        return cls(np.asarray(d["xyxy"], np.float32).reshape(-1, 4), d["labels"],
                   scores=d.get("scores"),
                   polygons=None if d.get("polygons") is None
                   else np.asarray(d["polygons"], np.float32).reshape(-1, 4, 2),
                   flags=d.get("flags"), extra=d.get("extra"))


def polygons_to_enclosing_xyxy(polygons: np.ndarray) -> np.ndarray:
    """``[N, 4, 2]`` polygons -> ``[N, 4]`` enclosing xyxy boxes (same dtype)."""
    from danlu.boxes.convert import polygon_to_xyxy

    return polygon_to_xyxy(np.asarray(polygons).reshape(-1, 4, 2))


def _notebook() -> Any:
    """:mod:`danlu.data.notebook`, by name: the display methods are the one place the vocabulary
    calls up the room order (the drawer lives in ``danlu.data``); late, so no PIL at import."""
    from importlib import import_module

    return import_module("danlu.data.notebook")


def compare_detections(a: Detections, b: Detections, *, atol: float = 1e-4) -> str | None:
    """Describe the first difference between ``a`` and ``b`` (None when they match).

    Boxes, scores and polygons are compared with absolute tolerance ``atol``; labels and flags
    exactly; order matters.
    """
    if len(a) != len(b):
        return f"lengths differ: {len(a)} != {len(b)}"
    if not np.array_equal(a.labels, b.labels):
        i = int(np.flatnonzero(a.labels != b.labels)[0])
        return f"labels differ at {i}: {a.labels[i]} != {b.labels[i]}"
    for name in ("xyxy", "scores", "polygons"):
        x, y = getattr(a, name), getattr(b, name)
        if (x is None) != (y is None):
            return f"{name} present in only one"
        if x is not None and not np.allclose(x, y, atol=atol, rtol=0):
            i = int(np.argwhere(~np.isclose(x, y, atol=atol, rtol=0))[0][0])
            return f"{name} differ at {i}: {x[i].tolist()} != {y[i].tolist()}"
    if set(a.flags) != set(b.flags):
        return f"flags differ: {sorted(a.flags)} != {sorted(b.flags)}"
    for k in a.flags:
        if not np.array_equal(a.flags[k], b.flags[k]):
            return f"flag {k!r} differs"
    return None


@dataclass
class Sample:
    """One image and its detections.

    Args:
        image: a path to the image file, its encoded bytes, or an ``HxWxC`` uint8 array.
        width: image width in pixels.
        height: image height in pixels.
        detections: the boxes on this image (ground truth or predictions).
        id: a stable identifier (a file stem, or a COCO image id); defaults to the file stem.
        meta: anything else a reader keeps (e.g. DOTA ``gsd``, a tile's origin).
    """

    image: ImageRef | None
    width: int
    height: int
    detections: Detections = field(default_factory=Detections.empty)
    id: str | int | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id is None and isinstance(self.image, (str, Path)):
            self.id = Path(self.image).stem

    @property
    def path(self) -> Path | None:
        """The image path, when the image is a file."""
        return Path(self.image) if isinstance(self.image, (str, Path)) else None

    def load_image(self) -> np.ndarray:
        """Decode the image as an ``HxWx3`` uint8 RGB array."""
        if isinstance(self.image, np.ndarray):
            return self.image
        if self.image is None:
            raise DatasetError(f"sample {self.id!r} has no image")
        import io

        from PIL import Image

        try:
            src = io.BytesIO(self.image) if isinstance(self.image, bytes) else self.image
            with Image.open(src) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            where = self.image if isinstance(self.image, (str, Path)) else f"sample {self.id!r}"
            raise DatasetError(f"{where}: cannot decode image ({e})") from e

    def _repr_png_(self) -> bytes | None:
        """PNG bytes of the image with its boxes drawn (labels as numbers: a sample does not know
        its class names), longest side at most 800 px; None when the image cannot be read, so
        that a notebook shows the text ``repr`` instead.

        Example:
            >>> s = Sample(np.zeros((40, 60, 3), np.uint8), 60, 40, Detections([[5, 5, 9, 9]], [0]))
            >>> s._repr_png_()[:8], Sample("no/such.png", 60, 40)._repr_png_()
            (b'\\x89PNG\\r\\n\\x1a\\n', None)
        """
        return _notebook().sample_png(self)


@dataclass
class Dataset:
    """Ordered samples plus the class names their labels index into.

    Example:
        >>> import numpy as np
        >>> s = Sample("a.jpg", 64, 48, Detections(np.array([[1, 2, 30, 40]]), np.array([0])))
        >>> ds = Dataset([s], ["cat"])
        >>> len(ds), ds.num_boxes, ds[0].id
        (1, 1, 'a')
    """

    samples: list[Sample]
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.samples = list(self.samples)
        self.class_names = [str(c) for c in self.class_names]

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int | slice | Sequence[int]) -> Any:
        """An int gives a :class:`Sample`; a slice or index sequence gives a ``Dataset``."""
        if isinstance(index, (int, np.integer)):
            return self.samples[index]
        if isinstance(index, slice):
            return self.subset(range(len(self))[index])
        return self.subset(index)

    def subset(self, indices: Iterable[int]) -> Dataset:
        """The samples at ``indices`` (same class names and meta)."""
        return Dataset([self.samples[int(i)] for i in indices], self.class_names, dict(self.meta))

    @property
    def num_boxes(self) -> int:
        """Total number of boxes over all samples."""
        return sum(len(s.detections) for s in self.samples)

    @property
    def class_to_index(self) -> dict[str, int]:
        """Class name -> label index."""
        return {name: i for i, name in enumerate(self.class_names)}

    def detections(self) -> list[Detections]:
        """The detections of every sample, in order."""
        return [s.detections for s in self.samples]

    def _repr_html_(self) -> str:
        """A notebook summary: counts of images, boxes and boxes per class, and thumbnails of the
        first 6 samples with boxes and class names (:func:`danlu.data.notebook.dataset_html`)."""
        return _notebook().dataset_html(self)

    # -- the TrainingData protocol ---------------------------------------------------------
    def item_size(self, index: int) -> tuple[int, int]:
        """``(width, height)`` of sample ``index``, as its annotation states (no decode)."""
        s = self.samples[index]
        return s.width, s.height

    def item_boxes(self, index: int) -> Detections:
        """The detections of sample ``index`` (no pixels read)."""
        return self.samples[index].detections

    def load_item(self, index: int) -> tuple[np.ndarray, Detections]:
        """Sample ``index``'s decoded ``HxWx3`` uint8 image and its detections."""
        s = self.samples[index]
        return s.load_image(), s.detections


@runtime_checkable
class TrainingData(Protocol):
    """What training reads: implemented by :class:`Dataset` and by
    :class:`~danlu.data.pack.PackedDataset` (and by anything else with these members).

    ``item_size(i)`` is the ``(width, height)`` of the image ``load_item(i)`` returns, and
    ``item_boxes(i)`` its boxes in that image's pixels, both without decoding pixels.
    """

    class_names: list[str]

    def __len__(self) -> int: ...

    def item_size(self, index: int) -> tuple[int, int]: ...

    def item_boxes(self, index: int) -> Detections: ...

    def load_item(self, index: int) -> tuple[np.ndarray, Detections]: ...


__all__ = ["Detections", "Sample", "Dataset", "TrainingData", "compare_detections",
           "polygons_to_enclosing_xyxy"]
