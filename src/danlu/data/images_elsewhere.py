"""Annotations whose images are elsewhere or absent: find them in another folder, or count them.

A COCO json or a VOC folder often travels without its images (they sit on another disk, or
only the annotations were downloaded). What does not need pixels (statistics, evaluation,
conversion without images) reads the annotations alone and says how many images are not on
disk; ``image_dir`` points at the folder that holds them.

:func:`relocate_images` looks up each missing image in ``image_dir`` by its file name, then by
its stem with any image extension (a dataset converted from PNG to JPEG); a name found twice
in ``image_dir``'s sub-folders is not guessed. :func:`missing_images` lists what is still
missing.

Example:
    >>> import tempfile, pathlib
    >>> from danlu.structures import Dataset, Sample
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "a.png").write_bytes(b"")
    0
    >>> ds = Dataset([Sample("/gone/a.jpg", 8, 8), Sample("/gone/b.jpg", 8, 8)], ["cat"])
    >>> ds, found = relocate_images(ds, d)
    >>> found, [pathlib.Path(s.image).name for s in ds.samples], len(missing_images(ds))
    (1, ['a.png', 'b.jpg'], 1)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from danlu.data.formats._common import IMAGE_EXTENSIONS, ReadContext
from danlu.errors import DatasetError
from danlu.structures import Dataset, Sample


def _path(sample: Sample) -> str | None:
    return os.fspath(sample.image) if isinstance(sample.image, (str, os.PathLike)) else None


def missing_images(ds: Dataset) -> list[Sample]:
    """The samples whose image is a path that does not exist (in-memory images never are)."""
    return [s for s in ds.samples if (p := _path(s)) is not None and not os.path.isfile(p)]


def _index(folder: Path) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """``(by file name, by stem)`` of every image under ``folder``; None marks a name found
    more than once."""
    by_name: dict[str, str | None] = {}
    by_stem: dict[str, str | None] = {}
    for root, _, files in os.walk(folder):
        for f in files:
            stem, ext = os.path.splitext(f)
            if ext.lower() not in IMAGE_EXTENSIONS:
                continue
            full = os.path.join(root, f)
            by_name[f] = None if f in by_name else full
            by_stem[stem] = None if stem in by_stem else full
    return by_name, by_stem


def relocate_images(ds: Dataset, image_dir: str | os.PathLike[str]) -> tuple[Dataset, int]:
    """``ds`` with each missing image looked up in ``image_dir`` (see the module docstring),
    and how many were found there.

    Raises:
        DatasetError: ``image_dir`` is not a folder.
    """
    folder = Path(image_dir)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: the image folder does not exist")
    by_name, by_stem = _index(folder)
    found = 0
    samples = []
    for s in ds.samples:
        p = _path(s)
        if p is not None and not os.path.isfile(p):
            name = os.path.basename(p)
            hit = by_name.get(name) or by_stem.get(os.path.splitext(name)[0])
            if hit is not None:
                s = Sample(hit, s.width, s.height, s.detections, id=s.id, meta=dict(s.meta))
                found += 1
        samples.append(s)
    return Dataset(samples, ds.class_names, dict(ds.meta)), found


def missing_text(missing: Sequence[Sample], total: int) -> str:
    """``"3 of 10 images are not on disk (e.g. a.jpg, b.jpg)"``."""
    names = ", ".join(os.path.basename(_path(s) or "") for s in missing[:3])
    return f"{len(missing)} of {total} images are not on disk (e.g. {names})"


#: where a "not on disk" error points a user
ANNOTATIONS_ONLY_HINT = ("point --image-dir at the folder that holds them; data stats, eval "
                         "and convert --images none read the annotations alone")


def apply_image_policy(ds: Dataset, ctx: ReadContext, check_images: bool | str,
                       image_dir: str | os.PathLike[str] | None) -> Dataset:
    """What :func:`danlu.data.io.load_dataset` does after a read for ``check_images`` and
    ``image_dir``: ``ds`` with its images looked up in ``image_dir``, and those still not on
    disk counted in ``ctx.notices`` (``"warn"``), refused (True) or skipped and named in
    ``ctx.warnings`` (True with ``ctx.skip_invalid``)."""
    if image_dir is not None:
        ds, found = relocate_images(ds, image_dir)
        ctx.notices.append(f"{found} of {len(ds)} images found in {image_dir}")
    missing = missing_images(ds) if check_images else []
    if not missing:
        return ds
    if check_images == "warn":
        ctx.notices.append(missing_text(missing, len(ds)) + ": their annotations "
                           "are read all the same")
        return ds
    if not ctx.skip_invalid:
        raise DatasetError(missing_text(missing, len(ds)),
                           hint=ANNOTATIONS_ONLY_HINT)
    gone = {id(s) for s in missing}
    ctx.warnings.extend(f"{s.image}: image file not found" for s in missing)
    return Dataset([s for s in ds.samples if id(s) not in gone], ds.class_names, dict(ds.meta))
