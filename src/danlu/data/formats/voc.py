"""Pascal VOC: one XML file per image.

Layout::

    ROOT/Annotations/<id>.xml
    ROOT/JPEGImages/<filename>           (else JPEGImages/<id>.<any image extension>)
    ROOT/ImageSets/Main/<split>.txt      (one id per line; optional)
    ROOT/labels.txt                      (class names, one per line; optional, written by danlu)

Coordinates: VOC counts pixels from 1 and its boxes are inclusive, so a box covering pixels
``xmin..xmax`` (1-based) is the continuous box ``x1 = xmin - 1, x2 = xmax`` in danlu's
convention (width ``xmax - xmin + 1``); the writer inverts it, so integer VOC coordinates
survive read -> write -> read unchanged.

The image of ``<id>.xml`` is the file its ``<filename>`` names in ``JPEGImages/``; when that
is missing or names no file (exports that rename images, e.g. Roboflow's), it is
``JPEGImages/<id>.*`` with any image extension, as the VOC devkit finds it. Each sample's
``meta["image_found_by"]`` says which rule found it (``"filename"`` or ``"stem"``) and
``Dataset.meta["image_lookup"]`` counts them (``"unchecked"``: not found, read anyway with
``check_images=False``).

Per-box flags ``difficult`` and ``truncated`` are kept (``occluded`` too when present).
XML is parsed with defusedxml's parser (entity declarations and external entities raise
:class:`DatasetError`); files with only plain elements take a fast path where expat checks
well-formedness and a regular expression reads the values.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "voc"
    >>> det = Detections(np.array([[0, 0, 10, 20]]), np.array([0]))
    >>> write_voc(Dataset([Sample(None, 64, 48, det, id="a")], ["cat"]), root, images="none")
    >>> print((root / "Annotations" / "a.xml").read_text().split("<bndbox>")[1][:46])
    <xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ym
"""

from __future__ import annotations

import html
import os
import re
from operator import itemgetter
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

import numpy as np
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError
from defusedxml.ElementTree import fromstring as _defused_fromstring

from danlu.data.formats._common import (
    FileIndex,
    RawImage,
    ReadContext,
    assemble,
    fmt_num,
    image_names,
    place_image,
    safe_join_str,
)
from danlu.data.formats._xml import safe_expat
from danlu.data.imagesize import image_size
from danlu.errors import DatasetError
from danlu.structures import Dataset, Sample

FLAGS = ("difficult", "truncated")

# Leaves <tag>text</tag> without attributes.
_LEAF = re.compile(rb"<(\w+)>([^<]*)</\1>")
_SLOW_RE = re.compile(rb"<!--|<!\[CDATA\[|&|<!DOCTYPE|<\?xml-stylesheet|<part\b")
_UTF8_RE = re.compile(rb"encoding\s*=\s*[\"'](utf-?8|us-ascii|ascii)[\"']", re.I)
_REQUIRED = {b"name", b"xmin", b"ymin", b"xmax", b"ymax"}


def _escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as XML entities (what ``xml.sax.saxutils.escape`` does; that
    module imports ``urllib.request``, a cost every VOC read would pay)."""
    return html.escape(text, quote=False)


def is_voc(path: Path) -> bool:
    """True for a folder holding ``Annotations/``."""
    return path.is_dir() and (path / "Annotations").is_dir()


def _check_xml(data: bytes, where: str) -> None:
    """Well-formedness and entity checks through defusedxml's expat set-up (no tree built)."""
    ex = safe_expat()
    try:
        ex.Parse(data, True)
    except ExpatError as e:
        raise DatasetError(f"{where}: line {e.lineno}: malformed XML ({_expat_reason(e)})") from e
    except DefusedXmlException as e:
        raise DatasetError(f"{where}: XML entities or DTDs are not allowed ({e})",
                           hint="VOC files need no entity declarations") from e


def _expat_reason(e: Exception) -> str:
    return str(e).split(":")[0]


def _fast_parse(data: bytes) -> dict | None:
    """Values of a plain VOC file (already checked well-formed), or None when it needs the
    full parser (comments, CDATA, entities, object parts, attributes on objects ...)."""
    if _SLOW_RE.search(data) is not None:
        return None
    if data.startswith(b"<?xml"):
        decl = data[:data.find(b"?>")]
        if b"encoding" in decl and _UTF8_RE.search(decl) is None:
            return None
    chunks = data.split(b"<object>")
    if data.count(b"<object") != len(chunks) - 1:
        return None
    objects = [dict(_LEAF.findall(c)) for c in chunks[1:]]
    for o in objects:
        if not _REQUIRED <= o.keys():
            return None
    return {"top": dict(_LEAF.findall(chunks[0])), "objects": objects}


def _slow_parse(data: bytes, where: str) -> dict:
    """Values through defusedxml's ElementTree (comments, CDATA, entities, attributes)."""
    try:
        root = _defused_fromstring(data)
    except ParseError as e:
        line = getattr(e, "position", (0, 0))[0]
        raise DatasetError(f"{where}: line {line}: malformed XML ({_expat_reason(e)})") from e
    except DefusedXmlException as e:
        raise DatasetError(f"{where}: XML entities or DTDs are not allowed ({e})") from e
    if root.tag != "annotation":
        raise DatasetError(f"{where}: expected root element <annotation>, got <{root.tag}>")
    top: dict[bytes, bytes] = {}
    for key, path in (("filename", "filename"), ("width", "size/width"),
                      ("height", "size/height")):
        node = root.find(path)
        if node is not None and node.text is not None:
            top[key.encode()] = node.text.encode()
    objects = []
    for i, node in enumerate(root.iter("object")):
        o: dict[bytes, bytes] = {}
        for key in ("name", *FLAGS, "occluded"):
            text = node.findtext(key)
            if text is not None:
                o[key.encode()] = text.encode()
        box = node.find("bndbox")
        if box is None:
            raise DatasetError(f"{where}: object[{i}]: expected a <bndbox> element")
        for key in ("xmin", "ymin", "xmax", "ymax"):
            text = box.findtext(key)
            if text is None:
                raise DatasetError(f"{where}: object[{i}].bndbox: expected <{key}>")
            o[key.encode()] = text.encode()
        if b"name" not in o:
            raise DatasetError(f"{where}: object[{i}]: expected a <name> element")
        objects.append(o)
    return {"top": top, "objects": objects}


_FLAG_VALUES = {b"0": False, b"": False, b"false": False, b"False": False,
                b"1": True, b"true": True, b"True": True}


def _parse_file(xml_path: str, stem: str, img_dir: str, images: FileIndex,
                ctx: ReadContext) -> tuple[RawImage, list[dict[bytes, bytes]]]:
    where = xml_path
    try:
        with open(xml_path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"{where}: cannot read ({e.strerror or e})") from e
    _check_xml(data, where)
    parsed = _fast_parse(data) or _slow_parse(data, where)
    top = parsed["top"]
    filename = top.get(b"filename", b"").decode("utf-8").strip()
    named = safe_join_str(img_dir, filename, f"{where}: <filename>") if filename else None
    if named is not None and images.exists(named):
        image_path, found_by = named, "filename"
    else:  # what the VOC devkit does: JPEGImages/<the XML file's stem>.<ext>
        image_path, found_by = images.find_image(img_dir, stem), "stem"
        if image_path is None:
            if ctx.check_images:
                tried = f"image file {named} not found, " if named else "no <filename>, "
                raise DatasetError(f"{where}: {tried}nor an image JPEGImages/{stem}.* by the "
                                   "XML file's stem",
                                   hint="name the image in <filename> or after the XML file")
            image_path, found_by = named or os.path.join(img_dir, stem + ".jpg"), None
    try:
        width = int(float(top.get(b"width", b"0")))
        height = int(float(top.get(b"height", b"0")))
    except (ValueError, OverflowError) as e:
        raise DatasetError(f"{where}: <size>: expected integer width and height, "
                           f"got {top.get(b'width')!r} x {top.get(b'height')!r}") from e
    if width < 0 or height < 0:
        raise DatasetError(f"{where}: <size>: negative image size {width} x {height}")
    if width == 0 or height == 0:  # some VOC-style files leave the size at 0: read it
        if not images.exists(image_path):
            raise DatasetError(f"{where}: <size> is missing and the image is not there to "
                               "measure")
        width, height = image_size(image_path)
    raw = RawImage(image_path, width, height, stem, where,
                   meta={"image_found_by": found_by} if found_by else {})
    return raw, parsed["objects"]


def _to_floats(values: list[bytes]) -> np.ndarray:
    """bytes -> float64, NaN where a value is not a number."""
    try:
        return np.fromiter(map(float, values), np.float64, len(values))
    except ValueError:
        out = np.empty(len(values))
        for i, v in enumerate(values):
            try:
                out[i] = float(v)
            except ValueError:
                out[i] = np.nan
        return out


def _flatten(raws: list[RawImage], objects: list[list[dict]], ctx: ReadContext
             ) -> dict[str, Any]:
    """All objects of all files as flat arrays; bad values are reported and masked."""
    counts = [len(o) for o in objects]
    objs = [o for per in objects for o in per]
    n = len(objs)
    cols = [_to_floats(list(map(itemgetter(k), objs))) for k in _BOX_KEYS]
    xyxy = np.stack(cols, axis=1).reshape(n, 4) if n else np.zeros((0, 4))
    xyxy[:, :2] -= 1.0  # VOC's 1-based inclusive corners -> continuous
    keep = np.ones(n, bool)
    names_b = list(map(itemgetter(b"name"), objs))
    decoded = {b: b.decode("utf-8", "replace").strip() for b in set(names_b)}
    names = list(map(decoded.__getitem__, names_b))
    flag_keys = ["difficult", "truncated"]
    if any(b"occluded" in o for o in objs):
        flag_keys.append("occluded")
    flags = {}
    for key in flag_keys:
        kb = key.encode()
        vals = [o.get(kb, b"0") for o in objs]
        arr = list(map(_FLAG_VALUES.get, vals))
        if None in arr:
            arr = [_FLAG_VALUES.get(v.strip()) for v in vals]
        flags[key] = np.array(arr, bool).reshape(n)  # None (reported below) -> False
        for i in [i for i, v in enumerate(arr) if v is None]:
            keep[i] = False
            _report(raws, counts, i, ctx, f"{key}: expected 0 or 1, got "
                    f"{vals[i].decode('utf-8', 'replace')!r}")
    bad = np.flatnonzero(~np.isfinite(xyxy).all(axis=1) & keep)
    for i in bad:
        keep[i] = False
        got = [objs[i][k].decode("utf-8", "replace") for k in _BOX_KEYS]
        _report(raws, counts, int(i), ctx, f"bndbox: expected numbers, got {got}")
    xyxy[~keep] = 0.0
    return {"counts": counts, "xyxy": xyxy, "names": names, "flags": flags, "keep": keep}


def _report(raws: list[RawImage], counts: list[int], i: int, ctx: ReadContext,
            message: str) -> None:
    for r, c in zip(raws, counts, strict=True):
        if i < c:
            ctx.fail(f"{r.source}: object[{i}].{message}")
            return
        i -= c


_BOX_KEYS = (b"xmin", b"ymin", b"xmax", b"ymax")


def read_voc(path: Path, ctx: ReadContext) -> Dataset:
    """Read a Pascal VOC folder (see the module docstring for the layout and conventions).

    ``ctx.split`` selects the ids listed in ``ImageSets/Main/<split>.txt``; without it every
    ``Annotations/*.xml`` is read (sorted by name). Class names come from ``ctx.class_names``,
    else ``labels.txt``, else the sorted names found.
    """
    path = Path(path)
    ann_dir = path / "Annotations"
    if not ann_dir.is_dir():
        raise DatasetError(f"{path}: not a VOC folder (no Annotations/)")
    if ctx.split:
        list_file = path / "ImageSets" / "Main" / f"{ctx.split}.txt"
        if not list_file.is_file():
            raise DatasetError(f"{list_file}: split {ctx.split!r} not found")
        ids = []
        for lineno, line in enumerate(_read_text(list_file).splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if "/" in parts[0] or "\\" in parts[0] or parts[0] in (".", ".."):
                raise DatasetError(f"{list_file}: line {lineno}: expected an image id, "
                                   f"got {parts[0]!r}")
            ids.append(parts[0])
        stems = ids
    else:
        with os.scandir(ann_dir) as it:
            stems = sorted(e.name[:-4] for e in it
                           if e.name.endswith(".xml") and not e.name.startswith("."))
    class_names = list(ctx.class_names) if ctx.class_names is not None else None
    labels_file = path / "labels.txt"
    if class_names is None and labels_file.is_file():
        class_names = [ln.strip() for ln in _read_text(labels_file).splitlines() if ln.strip()]
    images = FileIndex()
    raws, objects = [], []
    ann, img_dir = str(ann_dir) + os.sep, str(path / "JPEGImages")
    for stem in ctx.progress(stems, "reading VOC", len(stems)):
        try:
            raw, objs = _parse_file(f"{ann}{stem}.xml", stem, img_dir, images, ctx)
        except DatasetError as e:
            ctx.fail(e.message, e.hint)
            continue
        raws.append(raw)
        objects.append(objs)
    flat = _flatten(raws, objects, ctx)
    samples, names = assemble(raws, class_names, ctx, tol=1.0, flat=flat,
                              loc_format="object[{k}]")
    lookup = {"filename": 0, "stem": 0}
    for s in samples:
        found_by = s.meta.get("image_found_by")
        lookup[found_by or "unchecked"] = lookup.get(found_by or "unchecked", 0) + 1
    meta: dict[str, Any] = {"format": "voc", "image_lookup": lookup}
    if ctx.split:
        meta["split"] = ctx.split
        for s in samples:
            s.meta["split"] = ctx.split
    return Dataset(samples, names, meta)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read as UTF-8 text ({e})") from e


def _xml(sample: Sample, filename: str, class_names: list[str]) -> str:
    det = sample.detections
    out = ["<annotation>\n\t<folder>JPEGImages</folder>\n",
           f"\t<filename>{_escape(filename)}</filename>\n",
           f"\t<size>\n\t\t<width>{int(sample.width)}</width>\n"
           f"\t\t<height>{int(sample.height)}</height>\n\t\t<depth>3</depth>\n\t</size>\n",
           "\t<segmented>0</segmented>\n"]
    flags = {k: det.flag(k) for k in (*FLAGS, "occluded") if k in det.flags or k in FLAGS}
    for i in range(len(det)):
        x1, y1, x2, y2 = det.xyxy[i].tolist()
        name = _escape(class_names[int(det.labels[i])])
        flag_xml = "".join(f"\t\t<{k}>{int(v[i])}</{k}>\n" for k, v in flags.items())
        out.append(f"\t<object>\n\t\t<name>{name}</name>\n\t\t<pose>Unspecified</pose>\n"
                   f"{flag_xml}\t\t<bndbox><xmin>{fmt_num(x1 + 1)}</xmin>"
                   f"<ymin>{fmt_num(y1 + 1)}</ymin><xmax>{fmt_num(x2)}</xmax>"
                   f"<ymax>{fmt_num(y2)}</ymax></bndbox>\n\t</object>\n")
    out.append("</annotation>\n")
    return "".join(out)


def write_voc(ds: Dataset, root: Path, *, images: str = "copy",
              progress=None) -> None:  # noqa: ANN001 - a progress wrapper
    """Write ``ds`` as a VOC folder at ``root`` (which the caller makes atomic).

    Also writes ``labels.txt`` (class order) and ``ImageSets/Main/<split>.txt`` for samples
    whose ``meta["split"]`` is set. ``images``: ``copy``, ``symlink`` or ``none``.
    """
    root = Path(root)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    names = image_names(ds)
    splits: dict[str, list[str]] = {}
    items = list(zip(ds.samples, names, strict=True))
    if progress is not None:
        items = progress(items, "writing VOC", len(items))
    for sample, name in items:
        stem = os.path.splitext(name)[0]
        (root / "Annotations" / f"{stem}.xml").write_text(_xml(sample, name, ds.class_names),
                                                           encoding="utf-8")
        place_image(sample, root / "JPEGImages" / name, images)
        split = sample.meta.get("split") if isinstance(sample.meta, dict) else None
        if split:
            splits.setdefault(str(split), []).append(stem)
    (root / "labels.txt").write_text("".join(f"{c}\n" for c in ds.class_names), encoding="utf-8")
    if splits:
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        for split, ids in splits.items():
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
                "".join(f"{i}\n" for i in ids), encoding="utf-8")


__all__ = ["read_voc", "write_voc", "is_voc"]
