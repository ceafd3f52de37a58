"""DOTA v1.0 / v1.5 / v2.0: oriented boxes as 4-point polygons, one text file per image.

Layout::

    ROOT/images/<stem>.png
    ROOT/labelTxt/<stem>.txt
    ROOT/labels.txt            (class names, one per line; optional, written by danlu)

A label file holds optional header lines ``imagesource:<text>`` and ``gsd:<number|null>``
(kept in ``Sample.meta["imagesource"]`` / ``["gsd"]``), then one object per line::

    x1 y1 x2 y2 x3 y3 x4 y4 class difficult

(``difficult`` is optional, 0 by default; a score column is not part of the format). The four
points are continuous pixel coordinates in DOTA order; danlu keeps them in
``Detections.polygons`` and sets ``xyxy`` to the enclosing box. Class names come from
``class_names`` (a list, or ``"dota-v1.0"`` / ``"dota-v1.5"`` / ``"dota-v2.0"`` for the official
lists), else ``labels.txt``, else the sorted names found. Image sizes come from image headers.
Points may lie outside the image (the official annotations have such); a box entirely
outside the image is an error.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "dota"
    >>> poly = np.array([[[10, 10], [30, 12], [28, 30], [8, 28]]])
    >>> det = Detections(None, np.array([0]), polygons=poly)
    >>> write_dota(Dataset([Sample(None, 64, 48, det, id="a")], ["plane"]), root,
    ...            images="none")
    >>> (root / "labelTxt" / "a.txt").read_text()
    '10 10 30 12 28 30 8 28 plane 0\\n'
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from danlu.data.formats._common import (
    IMAGE_EXTENSIONS,
    RawImage,
    ReadContext,
    assemble,
    fmt_num,
    image_names,
    place_image,
)
from danlu.data.imagesize import image_size
from danlu.errors import DatasetError
from danlu.structures import Dataset, Sample

DOTA_V1_CLASSES = [
    "plane", "ship", "storage-tank", "baseball-diamond", "tennis-court", "basketball-court",
    "ground-track-field", "harbor", "bridge", "large-vehicle", "small-vehicle", "helicopter",
    "roundabout", "soccer-ball-field", "swimming-pool",
]
DOTA_V15_CLASSES = [*DOTA_V1_CLASSES, "container-crane"]
DOTA_V2_CLASSES = [*DOTA_V15_CLASSES, "airport", "helipad"]
OFFICIAL_CLASSES = {"dota-v1.0": DOTA_V1_CLASSES, "dota-v1": DOTA_V1_CLASSES,
                    "dota-v1.5": DOTA_V15_CLASSES, "dota-v2.0": DOTA_V2_CLASSES,
                    "dota-v2": DOTA_V2_CLASSES}


def is_dota(path: Path) -> bool:
    """True for a folder holding ``labelTxt/``."""
    return path.is_dir() and (path / "labelTxt").is_dir()


def _parse(path: Path, data: bytes, raw: RawImage) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DatasetError(f"{path}: line {line}: not UTF-8 text") from e
    polys, names, diff, lines = [], [], [], []
    for i, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 9 and ":" in parts[0]:
            key, _, value = line.strip().partition(":")
            key = key.strip()
            value = value.strip()
            if key == "gsd":
                try:
                    raw.meta["gsd"] = None if value in ("null", "None", "") else float(value)
                except ValueError as e:
                    raise DatasetError(f"{path}: line {i}: gsd: expected a number or null, "
                                       f"got {value!r}") from e
            elif key == "imagesource":
                raw.meta["imagesource"] = value
            else:
                raise DatasetError(f"{path}: line {i}: unknown header {key!r} (expected "
                                   "imagesource: or gsd:)")
            continue
        if len(parts) not in (9, 10):
            raise DatasetError(f"{path}: line {i}: expected 'x1 y1 x2 y2 x3 y3 x4 y4 class "
                               f"difficult' (difficult optional), got {len(parts)} values")
        try:
            xy = [float(v) for v in parts[:8]]
        except ValueError as e:
            raise DatasetError(f"{path}: line {i}: expected 8 coordinates, got "
                               f"{' '.join(parts[:8])[:80]!r}") from e
        d = parts[9] if len(parts) == 10 else "0"
        if d not in ("0", "1", "2"):
            raise DatasetError(f"{path}: line {i}: difficult: expected 0 or 1, got {d!r}")
        polys.append(xy)
        names.append(parts[8])
        diff.append(d != "0")
        lines.append(f"line {i}")
    p = np.asarray(polys, np.float64).reshape(-1, 4, 2)
    if not np.isfinite(p).all():
        k = int(np.flatnonzero(~np.isfinite(p).reshape(len(p), -1).all(1))[0])
        raise DatasetError(f"{path}: {lines[k]}: coordinates must be finite numbers")
    raw.polygons = p
    raw.boxes = np.concatenate([p.min(axis=1), p.max(axis=1)], axis=1)
    raw.names = names
    raw.flags = {"difficult": diff}
    raw.lines = lines


def _class_list(value: object) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        if value.lower() not in OFFICIAL_CLASSES:
            raise DatasetError(f"unknown DOTA class list {value!r}",
                               hint="use dota-v1.0, dota-v1.5 or dota-v2.0, or a list of names")
        return list(OFFICIAL_CLASSES[value.lower()])
    return [str(v) for v in value]  # type: ignore[union-attr]


def read_dota(path: Path, ctx: ReadContext) -> Dataset:
    """Read a DOTA folder (see the module docstring for the layout and conventions)."""
    path = Path(path)
    lab_dir, img_dir = path / "labelTxt", path / "images"
    if not lab_dir.is_dir():
        raise DatasetError(f"{path}: not a DOTA folder (no labelTxt/)")
    with os.scandir(lab_dir) as it:
        labels = {os.path.splitext(e.name)[0]: lab_dir / e.name for e in it
                  if e.name.endswith(".txt") and not e.name.startswith(".")}
    imgs: dict[str, Path] = {}
    if img_dir.is_dir():
        with os.scandir(img_dir) as it:
            for e in it:
                stem, ext = os.path.splitext(e.name)
                if ext.lower() in IMAGE_EXTENSIONS and not e.name.startswith("."):
                    imgs.setdefault(stem, img_dir / e.name)
    class_names = _class_list(ctx.class_names)
    if class_names is None and (path / "labels.txt").is_file():
        class_names = [ln.strip() for ln in (path / "labels.txt").read_text(
            encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    stems = sorted(set(labels) | set(imgs))
    raws = []
    for stem in ctx.progress(stems, "reading DOTA", len(stems)):
        lab = labels.get(stem)
        try:
            img = imgs.get(stem)
            if ctx.sizes is not None and stem in ctx.sizes:
                w, h = ctx.sizes[stem]
                img = img or img_dir / f"{stem}.png"
            elif img is None:
                raise DatasetError(f"{lab}: no image {stem}.* in {img_dir}")
            else:
                w, h = image_size(img)
            raw = RawImage(str(img), w, h, stem, str(lab or img), flags={"difficult": []})
            if lab is not None:
                try:
                    with open(lab, "rb") as f:
                        data = f.read()
                except OSError as e:
                    raise DatasetError(f"{lab}: cannot read ({e.strerror or e})") from e
                _parse(lab, data, raw)
            else:
                raw.polygons = np.zeros((0, 4, 2))
            raws.append(raw)
        except DatasetError as e:
            ctx.fail(e.message, e.hint)
    # a polygon may stick out of the image (official DOTA labels do); reject boxes entirely
    # outside it by clipping the enclosing box check to the image bounds
    for r in raws:
        b = np.asarray(r.boxes, np.float64).reshape(-1, 4)
        if len(b):
            outside = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= r.width) | (
                b[:, 1] >= r.height)
            for k in np.flatnonzero(outside):
                ctx.fail(f"{r.source}: {r.lines[k]}: box lies entirely outside the image "
                         f"({r.width}x{r.height})")
            if outside.any():
                keep = ~outside
                r.boxes, r.polygons = b[keep], np.asarray(r.polygons)[keep]
                r.names = [n for n, k in zip(r.names, keep, strict=True) if k]
                r.flags = {"difficult": [f for f, k in zip(r.flags["difficult"], keep,
                                                           strict=True) if k]}
                r.lines = [ln for ln, k in zip(r.lines, keep, strict=True) if k]
    samples, names = assemble(raws, class_names, ctx, flag_names=("difficult",),
                              tol=float("inf"))
    return Dataset(samples, names, {"format": "dota"})


def _label_text(sample: Sample, class_names: list[str]) -> str:
    d = sample.detections
    out = []
    meta = sample.meta if isinstance(sample.meta, dict) else {}
    if "imagesource" in meta:
        out.append(f"imagesource:{meta['imagesource']}\n")
    if "gsd" in meta:
        gsd = meta["gsd"]
        out.append(f"gsd:{'null' if gsd is None else gsd}\n")
    if d.polygons is not None:
        polys = d.polygons.astype(np.float64).reshape(-1, 8)
    else:
        x1, y1, x2, y2 = d.xyxy.astype(np.float64).T
        polys = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], axis=1)
    diff = d.flag("difficult").astype(int).tolist()
    for i, row in enumerate(polys.tolist()):
        name = class_names[int(d.labels[i])].replace(" ", "-")
        out.append(" ".join(fmt_num(v) for v in row) + f" {name} {diff[i]}\n")
    return "".join(out)


def write_dota(ds: Dataset, root: Path, *, images: str = "copy",
               progress=None) -> None:  # noqa: ANN001 - a progress wrapper
    """Write ``ds`` as a DOTA folder at ``root`` (made atomic by the caller).

    Axis-aligned boxes become 4-point polygons (x1,y1) (x2,y1) (x2,y2) (x1,y2). Spaces in
    class names become ``-``. Also writes ``labels.txt`` (class order).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labelTxt").mkdir(parents=True, exist_ok=True)
    names = image_names(ds)
    items = list(zip(ds.samples, names, strict=True))
    if progress is not None:
        items = progress(items, "writing DOTA", len(items))
    for sample, name in items:
        place_image(sample, root / "images" / name, images)
        stem = os.path.splitext(name)[0]
        (root / "labelTxt" / f"{stem}.txt").write_text(_label_text(sample, ds.class_names),
                                                       encoding="utf-8")
    (root / "labels.txt").write_text("".join(f"{c.replace(' ', '-')}\n"
                                             for c in ds.class_names), encoding="utf-8")


__all__ = ["read_dota", "write_dota", "is_dota", "DOTA_V1_CLASSES", "DOTA_V15_CLASSES",
           "DOTA_V2_CLASSES"]
