"""What the format readers and writers share: error reporting, path safety, box checks,
assembling per-image arrays into samples, and placing image files in an output folder."""

from __future__ import annotations

import gc
import itertools
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGE_MODES = ("copy", "symlink", "none")

Progress = Callable[[Iterable[Any], str, int], Iterable[Any]]


def no_progress(items: Iterable[Any], description: str, total: int) -> Iterable[Any]:
    """The default progress wrapper: none."""
    return items


#: how every reader's invalid-item error ends: the one policy of the commands reading datasets
SKIP_HINT = ("--skip-invalid (skip_invalid=True in Python) skips such items, each named in "
             "the warnings")


@dataclass
class ReadContext:
    """Options every reader takes, and the warnings it collects with ``skip_invalid``.

    ``fail(message)`` raises :class:`DatasetError` or, with ``skip_invalid``, records the
    message in ``warnings`` and returns (the caller then skips the bad item). ``notices``
    hold what was read but looks wrong (nothing skipped), for the commands to print.
    """

    skip_invalid: bool = False
    check_images: bool = True
    split: str | None = None
    class_names: Sequence[str] | None = None
    progress: Progress = no_progress
    # image sizes by file stem: used instead of image headers (predictions without images)
    sizes: Mapping[str, tuple[int, int]] | None = None
    warnings: list[str] = field(default_factory=list)
    # what a person should know about how the dataset was read, nothing skipped (e.g. images
    # without a label file): ``load_dataset`` puts them in ``Dataset.meta["notices"]``
    notices: list[str] = field(default_factory=list)

    def fail(self, message: str, hint: str | None = None) -> None:
        if not self.skip_invalid:
            raise DatasetError(message, hint=f"{hint}; or {SKIP_HINT}" if hint else SKIP_HINT)
        self.warnings.append(message)


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection inside: a reader makes many objects and no cycles, and
    each collection Python starts meanwhile walks all of them (a tenth of a COCO read)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def safe_join(root: Path | str, relative: str, where: str) -> Path:
    """``root / relative`` when ``relative`` is a plain relative path staying inside ``root``.

    Raises:
        DatasetError: ``relative`` is empty, absolute (POSIX or Windows style) or climbs out
            of ``root`` with ``..``.
    """
    return Path(safe_join_str(str(root), relative, where))


def safe_join_str(root: str, relative: str, where: str) -> str:
    """:func:`safe_join` on strings (the fast path of readers with many files)."""
    if (type(relative) is str and relative and "/" not in relative and "\\" not in relative
            and ":" not in relative and "\x00" not in relative and relative not in (".", "..")):
        return root + os.sep + relative
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise DatasetError(f"{where}: expected a relative file name, got {relative!r}")
    if (relative.startswith(("/", "\\")) or PureWindowsPath(relative).drive
            or PurePosixPath(relative).is_absolute()):
        raise DatasetError(f"{where}: absolute path {relative!r} is not allowed",
                           hint="file names must be relative to the dataset folder")
    parts = relative.replace("\\", "/").split("/")
    if ".." in parts:
        raise DatasetError(f"{where}: file name {relative!r} escapes the dataset folder",
                           hint="file names must not contain '..'")
    kept = [p for p in parts if p not in ("", ".")]
    if not kept:
        raise DatasetError(f"{where}: expected a file name, got {relative!r}")
    return os.path.join(root, *kept)


def read_join_str(root: str, name: str, where: str) -> str:
    """Where a file name read from an annotation file points: relative names resolve against
    ``root`` (``..`` may climb out of it, as other readers allow), absolute names stay as they
    are; ``\\`` separators (files written on Windows) count as ``/``.

    Only readers use it: writers make their own file names (:func:`image_names`), so nothing
    is ever written outside the output folder.

    Raises:
        DatasetError: ``name`` is not a non-empty string, or names no file (``.``).
    """
    if (type(name) is str and name and "/" not in name and "\\" not in name
            and ":" not in name and "\x00" not in name and name not in (".", "..")):
        return root + os.sep + name
    if not isinstance(name, str) or not name or "\x00" in name:
        raise DatasetError(f"{where}: expected a file name, got {name!r}")
    if PureWindowsPath(name).drive and os.sep == "/":
        return name  # a Windows path read on POSIX: names no file here, reported as missing
    if os.sep == "/":
        name = name.replace("\\", "/")
    if name.strip("/.") == "":
        raise DatasetError(f"{where}: expected a file name, got {name!r}")
    return os.path.normpath(os.path.join(root, name))


class FileIndex:
    """The files of a folder, listed once: existence checks without one ``stat`` per file."""

    def __init__(self) -> None:
        self._dirs: dict[str, set[str]] = {}
        self._stems: dict[str, dict[str, str]] = {}

    def names(self, folder: str) -> set[str]:
        """The entry names of ``folder`` (empty when it cannot be listed)."""
        names = self._dirs.get(folder)
        if names is None:
            try:
                with os.scandir(folder) as it:
                    names = {e.name for e in it}
            except OSError:
                names = set()
            self._dirs[folder] = names
        return names

    def exists(self, path: str | os.PathLike[str]) -> bool:
        parent, name = os.path.split(os.fspath(path))
        return name in self.names(parent)

    def find_image(self, folder: str, stem: str) -> str | None:
        """The path of the image ``folder/<stem>.<ext>`` for any extension of
        :data:`IMAGE_EXTENSIONS`, in any case (the first in that order), or None."""
        by_stem = self._stems.get(folder)
        if by_stem is None:
            ranked: dict[str, tuple[int, str]] = {}
            for name in sorted(self.names(folder)):
                base, ext = os.path.splitext(name)
                rank = _EXT_RANK.get(ext.lower())
                if rank is not None and (base not in ranked or rank < ranked[base][0]):
                    ranked[base] = (rank, name)
            by_stem = self._stems[folder] = {k: v[1] for k, v in ranked.items()}
        name = by_stem.get(stem)
        return None if name is None else os.path.join(folder, name)


_EXT_RANK = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}


def box_problems(xyxy: np.ndarray, wh: np.ndarray, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-box checks on ``[N,4]`` continuous boxes against ``[N,2]`` image sizes.

    Returns:
        ``(bad_index, reason_code)``: indices of bad boxes and, for each, 0 = not finite,
        1 = negative size (x2 < x1 or y2 < y1), 2 = outside the image by more than ``tol`` px.
    """
    finite = np.isfinite(xyxy).all(axis=1)
    x = np.where(finite[:, None], xyxy, 0)
    negative = (x[:, 2] < x[:, 0]) | (x[:, 3] < x[:, 1])
    outside = ((x[:, 0] < -tol) | (x[:, 1] < -tol) | (x[:, 2] > wh[:, 0] + tol)
               | (x[:, 3] > wh[:, 1] + tol))
    code = np.full(len(x), -1)
    code[outside] = 2
    code[negative] = 1
    code[~finite] = 0
    bad = np.flatnonzero(code >= 0)
    return bad, code[bad]


REASONS = ("coordinates are not finite numbers", "negative box size (max < min)",
           "box lies outside the image")


@dataclass
class RawImage:
    """One image as a per-file parser sees it, before labels and checks."""

    image: Path | None
    width: int
    height: int
    id: str | int | None
    source: str  # the annotation file, for messages
    boxes: Any = field(default_factory=list)  # continuous xyxy: [k,4] list or array
    names: Any = field(default_factory=list)  # class names (str) or indices (int)
    # where each box is ("line 3", "object[2]"); when empty, box k is on "line k+1"
    lines: list[str] = field(default_factory=list)
    flags: dict[str, list[bool]] = field(default_factory=dict)
    scores: Any = None  # [k] list or array, or None
    polygons: Any = None  # [k, 8] list or array, or None
    meta: dict[str, Any] = field(default_factory=dict)


_SLOTS = ("xyxy", "labels", "scores", "polygons", "flags", "extra")
_FAST = tuple(getattr(Detections, "__slots__", ())) == _SLOTS


def make_detections(xyxy: np.ndarray, labels: np.ndarray, scores: np.ndarray | None = None,
                    polygons: np.ndarray | None = None, flags: dict[str, np.ndarray] | None = None,
                    extra: dict[str, np.ndarray] | None = None) -> Detections:
    """A ``Detections`` from arrays the reader already built with the right dtypes and shapes
    (float32 [N,4], int64 [N], ...; C-contiguous): skips the constructor's conversions, which
    cost a third of a COCO read. Falls back to the constructor if ``Detections`` changes."""
    if not _FAST:
        return Detections(xyxy, labels, scores=scores, polygons=polygons, flags=flags,
                          extra=extra)
    d = Detections.__new__(Detections)
    d.xyxy, d.labels, d.scores, d.polygons = xyxy, labels, scores, polygons
    d.flags = flags or {}
    d.extra = extra or {}
    return d


def assemble(raws: list[RawImage], class_names: list[str] | None, ctx: ReadContext, *,
             flag_names: Sequence[str] = (), tol: float = 1.0,
             names_are_indices: bool = False, flat: dict[str, Any] | None = None,
             loc_format: str | None = None) -> tuple[list[Sample], list[str]]:
    """Turn parsed images into samples: map names to labels, check boxes, split per image.

    Args:
        raws: parsed images.
        class_names: the known classes; None collects the names found, sorted.
        ctx: options and warnings.
        flag_names: the per-box flags of this format (each RawImage has all of them).
        tol: how far (pixels) a box may stick out of its image.
        names_are_indices: ``names`` hold label indices (YOLO) instead of class names.
        flat: the boxes of all images at once instead of per RawImage: ``counts`` [M],
            ``xyxy`` [N,4], ``names`` [N], ``flags`` {name: bool [N]}, ``keep`` bool [N]
            (False for boxes already reported).
        loc_format: how to name box ``k`` of a file in messages, e.g. ``"object[{k}]"``;
            default ``RawImage.lines[k]`` or ``"line {k+1}"``.

    Returns:
        ``(samples, class_names)``.
    """
    if flat is not None:
        counts = np.asarray(flat["counts"], np.int64)
    else:
        counts = np.fromiter((len(r.boxes) for r in raws), np.int64, len(raws))
    n = int(counts.sum())
    if flat is not None:
        all_names: list[Any] = flat["names"]
    elif names_are_indices:
        all_names = []
    else:
        all_names = [nm for r in raws for nm in r.names]
    if names_are_indices:
        labels = (np.concatenate([np.asarray(r.names, np.int64).reshape(-1) for r in raws])
                  if raws else np.zeros(0, np.int64))
        all_names = labels.tolist()
        if class_names is None:
            k = int(labels.max()) + 1 if n else 0
            class_names = [str(i) for i in range(k)]
        unknown = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    else:
        if class_names is None:
            class_names = sorted(set(all_names))
        index = {nm: i for i, nm in enumerate(class_names)}
        labels = np.fromiter(map(index.get, all_names, itertools.repeat(-1)), np.int64, n)
        unknown = np.flatnonzero(labels < 0)
    if flat is not None:
        xyxy = np.asarray(flat["xyxy"], np.float64).reshape(-1, 4)
    elif not n:
        xyxy = np.zeros((0, 4))
    elif all(type(r.boxes) is list for r in raws):
        xyxy = np.asarray([b for r in raws for b in r.boxes], np.float64).reshape(-1, 4)
    else:
        xyxy = np.concatenate([np.asarray(r.boxes, np.float64).reshape(-1, 4) for r in raws])
    sample_of = np.repeat(np.arange(len(raws)), counts)
    wh = np.asarray([(r.width, r.height) for r in raws], np.float64).reshape(-1, 2)[sample_of]
    keep_box = (np.ones(n, bool) if flat is None or flat.get("keep") is None
                else np.asarray(flat["keep"], bool).copy())
    bad, reason = box_problems(xyxy, wh, tol)
    problems = {int(i): REASONS[c] for i, c in zip(bad, reason, strict=True) if keep_box[i]}
    known = f"{', '.join(class_names[:20])}{' ...' if len(class_names) > 20 else ''}"
    for i in unknown:
        if keep_box[i]:
            what = (f"class index {all_names[i]} outside 0..{len(class_names) - 1}"
                    if names_are_indices else f"unknown class name {all_names[i]!r}")
            problems.setdefault(int(i), f"{what} (known: {known})")
    starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
    if problems:
        for i in sorted(problems):
            j = int(sample_of[i])
            r, k = raws[j], i - starts[j]
            if loc_format is not None:
                loc = loc_format.format(k=k)
            else:
                loc = r.lines[k] if k < len(r.lines) else f"line {k + 1}"
            coords = ", ".join(f"{v:g}" for v in xyxy[i])
            ctx.fail(f"{r.source}: {loc}: {problems[i]} (box xyxy [{coords}], "
                     f"image {r.width}x{r.height})")
            keep_box[i] = False
    bounds = list(zip(starts[:-1], starts[1:], strict=True))
    xyxy32 = np.ascontiguousarray(xyxy, np.float32)
    labels = np.ascontiguousarray(labels, np.int64)
    if flat is not None:
        flags_all = {k: np.ascontiguousarray(v, bool) for k, v in flat["flags"].items()}
    else:
        flags_all = {k: np.fromiter((v for r in raws for v in r.flags[k]), bool, n)
                     for k in flag_names}
    scores = polys = None
    if raws and raws[0].scores is not None:
        scores = np.concatenate([np.asarray(r.scores, np.float32).reshape(-1) for r in raws])
    if raws and raws[0].polygons is not None:
        polys = np.concatenate([np.asarray(r.polygons, np.float32).reshape(-1, 4, 2)
                                for r in raws])
    samples = []
    all_kept = bool(keep_box.all())
    for r, (a, b) in zip(raws, bounds, strict=True):
        det = make_detections(
            xyxy32[a:b], labels[a:b],
            scores=None if scores is None else scores[a:b],
            polygons=None if polys is None else polys[a:b],
            flags={k: v[a:b] for k, v in flags_all.items()},
        )
        if not all_kept and not keep_box[a:b].all():
            det = det[keep_box[a:b]]
        samples.append(Sample(r.image, r.width, r.height, det, id=r.id, meta=r.meta))
    return samples, list(class_names)


def file_stem(image: str | Path) -> str:
    """``Path(image).stem``, without building a ``Path`` for a plain string."""
    if os.sep == "/" and isinstance(image, str) and image and not image.endswith("/"):
        name = image.rpartition("/")[2]
        dot = name.rfind(".")
        return name[:dot] if 0 < dot < len(name) - 1 else name
    return Path(image).stem


# -- writing ------------------------------------------------------------------------------
def fmt_num(v: float) -> str:
    """A coordinate as short text: integers without a point, else up to 4 decimals."""
    r = round(float(v), 4)
    if r == int(r):
        return str(int(r))
    return repr(r)


def image_names(ds: Dataset, default_ext: str = ".png") -> list[str]:
    """A unique file name per sample (unique stems too: VOC/YOLO/DOTA link files by stem)."""
    from danlu.data.imagesize import image_format

    names: list[str] = []
    seen: set[str] = set()
    for i, s in enumerate(ds.samples):
        if isinstance(s.image, (str, os.PathLike)):
            name = Path(s.image).name
        else:
            stem = str(s.id) if s.id is not None else f"image_{i:06d}"
            stem = stem.replace("/", "_").replace("\\", "_")
            ext = default_ext
            if isinstance(s.image, bytes):
                kind = image_format(s.image[:16])
                ext = f".{kind}" if kind else default_ext
            name = stem + ext
        stem, ext = os.path.splitext(name)
        k = 1
        while stem in seen:
            stem = f"{os.path.splitext(name)[0]}_{k}"
            k += 1
        seen.add(stem)
        names.append(stem + ext)
    return names


def place_image(sample: Sample, dst: Path, mode: str) -> None:
    """Write the image of ``sample`` at ``dst``: ``copy`` the file (or its bytes / array),
    ``symlink`` to it, or ``none`` (write nothing)."""
    if mode == "none":
        return
    if mode not in IMAGE_MODES:
        raise DatasetError(f"images={mode!r}: expected one of {', '.join(IMAGE_MODES)}")
    img = sample.image
    dst.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(img, (str, os.PathLike)):
        src = Path(img)
        if not src.is_file():
            raise DatasetError(f"{src}: image file not found")
        if mode == "symlink":
            os.symlink(src.resolve(), dst)
        else:
            shutil.copyfile(src, dst)
    elif isinstance(img, bytes):
        dst.write_bytes(img)
    elif isinstance(img, np.ndarray):
        from PIL import Image

        Image.fromarray(img).save(dst)
    elif img is None:
        raise DatasetError(f"sample {sample.id!r} has no image to write",
                           hint="use images='none' to write annotations only")
    else:
        raise DatasetError(f"sample {sample.id!r}: unsupported image type {type(img).__name__}")


__all__ = ["ReadContext", "RawImage", "assemble", "make_detections", "paused_gc",
           "file_stem", "safe_join",
           "safe_join_str", "read_join_str", "FileIndex", "box_problems",
           "fmt_num", "image_names", "place_image", "IMAGE_EXTENSIONS", "IMAGE_MODES",
           "no_progress", "Progress"]
