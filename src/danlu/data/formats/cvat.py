"""CVAT for images 1.1: one XML file for all images, as CVAT exports a task, job or project.

Layout: ``ROOT/annotations.xml``, ``ROOT/images/<name>`` (else ``ROOT/<name>``; a name may
hold sub-folders). ``read_cvat`` takes the folder or the XML file: ``<annotations>`` holding
``<meta>`` (labels under ``<task>``, ``<job>`` or ``<project>``) and one ``<image id name
width height>`` per image with its shapes.

* Coordinates are continuous pixels, as in danlu: ``<box xtl ytl xbr ybr>`` is ``xyxy``.
* ``rotation`` (degrees, clockwise on screen, about the box centre; written when not 0) turns
  the corners ``(xtl,ytl) (xbr,ytl) (xbr,ybr) (xtl,ybr)`` as
  :func:`danlu.boxes.convert.cxcywha_to_polygon` does with ``a = radians(rotation)``. A
  rotated box is that polygon (``Detections.polygons``), ``xyxy`` its enclosing box.
* A ``<polygon>`` of 4 points is an oriented box (points as written); other polygons are read
  as their enclosing boxes (a notice counts them). ``<points>``, ``<polyline>``, ``<mask>``,
  ``<ellipse>``, ``<cuboid>``, ``<skeleton>`` and ``<tag>`` are skipped (a notice per kind,
  with its count). When a shape of the file is oriented, every sample has polygons (a box:
  its corners), as a DOTA dataset has.
* Classes: the labels of ``<meta>`` in order (not a skeleton's point labels, which have a
  ``<parent>``), then the labels used but not declared, sorted (a notice names them);
  ``class_names=`` fixes them instead (another label is then an error).
* Flags: ``occluded="1"`` is ``flags["occluded"]``; the attribute ``difficult`` and each one
  ``<meta>`` declares a ``checkbox`` are flags of their name (``true``/``false``, ``1``/``0``);
  ``difficult`` and ``occluded`` are always there. An attribute ``score`` is the score (1.0
  where a shape has none). Other attributes (a notice counts them), ``z_order``, ``group_id``
  and ``source`` are not kept.
* Images without shapes are kept. ``Sample.id`` is the name without extension; ``meta``
  keeps ``cvat_name`` and ``cvat_id`` (written back) and a project's ``subset`` as ``split``.

The writer writes ``<box>`` for an axis-aligned box; for an oriented one ``<box rotation>``
when that box reads back as its polygon (a rectangle from the same corner, to ``max(1e-4,
1e-6 |x|)`` px), else ``<polygon>`` (its 4 points): both read back as the same polygon. XML is
parsed by expat with defusedxml's defences (no entity declarations, no external references).

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> root = pathlib.Path(tempfile.mkdtemp()) / "cvat"
    >>> det = Detections(np.array([[1.5, 2, 10, 20]]), np.array([0]))
    >>> write_cvat(Dataset([Sample(None, 64, 48, det, id="a")], ["cat"]), root, images="none")
    >>> (root / "annotations.xml").read_text().split("<box ")[1].split(" z_order")[0]
    'label="cat" source="manual" occluded="0" xtl="1.5" ytl="2" xbr="10" ybr="20"'
    >>> read_cvat(root, ReadContext(check_images=False))[0].detections.xyxy.tolist()
    [[1.5, 2.0, 10.0, 20.0]]
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import TreeBuilder
from xml.parsers.expat import ExpatError

import numpy as np
from defusedxml import DefusedXmlException

from danlu.data.formats._common import (
    REASONS,
    FileIndex,
    ReadContext,
    make_detections,
    read_join_str,
)
from danlu.data.formats._xml import safe_expat
from danlu.data.formats.cvat_write import XML_NAME, cvat_xml, write_cvat  # noqa: F401
from danlu.errors import DatasetError
from danlu.structures import Dataset, Sample

_BASE_FLAGS = ("difficult", "occluded")
_BOOL = {"true": True, "1": True, "false": False, "0": False, "": False}
_BOX_KEYS = ("xtl", "ytl", "xbr", "ybr")
_VAL = ("val", "valid", "validation")
# what may precede the root element: a BOM, the declaration, comments, a doctype
_HEAD = re.compile(rb"(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*\?>\s*)?(?:(?:<!--.*?-->|<!DOCTYPE[^>]*>)"
                   rb"\s*)*<annotations[\s>/]", re.S)


class _ImageError(DatasetError):
    """A problem with one ``<image>``: the image is skipped (``skip_invalid``)."""


def is_cvat(path: Path) -> bool:
    """True for a folder's ``annotations.xml`` or an ``.xml`` file with the root element
    ``<annotations>`` (in its first 4 KiB): not a VOC folder (``Annotations/``) or file."""
    path = Path(path)
    if path.is_dir():
        if (path / "Annotations").is_dir():
            return False
        path = path / XML_NAME
    elif path.suffix.lower() != ".xml":
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return _HEAD.match(head) is not None


def _parse_xml(data: bytes, where: str) -> Any:
    """The element tree of ``data``, parsed by expat with defusedxml's defences (entity
    declarations and external references raise), built by the C ``TreeBuilder``."""
    ex, tree = safe_expat(), TreeBuilder()
    ex.StartElementHandler, ex.EndElementHandler = tree.start, tree.end
    ex.CharacterDataHandler, ex.buffer_text = tree.data, True
    try:
        ex.Parse(data, True)
        root = tree.close()
    except ExpatError as e:
        reason = str(e).split(":")[0]
        raise DatasetError(f"{where}: line {e.lineno}: malformed XML ({reason})") from e
    except DefusedXmlException as e:
        raise DatasetError(f"{where}: XML entities or DTDs are not allowed ({e})",
                           hint="CVAT files need no entity declarations") from e
    except (ValueError, LookupError) as e:  # an encoding expat cannot read
        raise DatasetError(f"{where}: cannot read as XML ({e})") from e
    if root.tag != "annotations":
        raise DatasetError(f"{where}: expected root element <annotations> (CVAT for images "
                           f"1.1), got <{root.tag}>")
    return root


def _meta_labels(root: Any) -> tuple[list[str] | None, set[str]]:
    """The declared class names in order (None: no ``<labels>``); the checkbox attributes."""
    meta = root.find("meta")
    found = [] if meta is None else [meta.find(f"{k}/labels") for k in ("task", "job", "project")]
    labels = next((x for x in found if x is not None), None)
    if labels is None:
        return None, set()
    names, checkbox = [], set()
    for lab in labels.iterfind("label"):
        name = (lab.findtext("name") or "").strip()
        if not name or (lab.findtext("parent") or "").strip():
            continue  # nameless, or a skeleton's point
        if name not in names:
            names.append(name)
        for a in lab.iterfind("attributes/attribute"):
            if (a.findtext("input_type") or "").strip() == "checkbox":
                checkbox.add((a.findtext("name") or "").strip())
    return names, checkbox


def _float(v: str | None) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _number(el: Any, key: str, where: str) -> float:
    try:
        if math.isfinite(x := float(el.get(key))):
            return x
    except (TypeError, ValueError):
        pass
    raise DatasetError(f"{where}: missing {key} (expected a number)" if (v := el.get(key)) is
                       None else f"{where}: {key}: expected a finite number, got {v[:40]!r}")


def _points(el: Any, where: str) -> list[float]:
    v = el.get("points")
    pairs = [p.split(",") for p in (v or "").strip().strip(";").split(";")]
    pts = [_float(c) for p in pairs if len(p) == 2 for c in p]
    if len(pts) < 6 or len(pts) != 2 * len(pairs) or not all(map(math.isfinite, pts)):
        got = "nothing" if v is None else repr(v[:60])
        raise DatasetError(f"{where}: points: expected 'x1,y1;x2,y2;...' (at least 3 points), "
                           f"got {got}")
    return pts


def _image_head(el: Any, i: int, src: str, roots: tuple[str, str], files: FileIndex,
                ctx: ReadContext) -> tuple[str, str, int, int]:
    """``(path, name, width, height)`` of ``<image>`` number ``i``."""
    where = f"{src}: image[{i}]"
    name = el.get("name")
    if not name:
        raise _ImageError(f"{where}: missing name (expected the image's file name)")
    size = [_float(el.get(key)) for key in ("width", "height")]
    for key, x in zip(("width", "height"), size, strict=True):
        if not (math.isfinite(x) and x == int(x) and x > 0):
            got = "nothing" if (v := el.get(key)) is None else repr(v[:40])
            raise _ImageError(f"{where}: {key}: expected a positive integer, got {got}")
    try:
        paths = [read_join_str(r, name, f"{where}: name") for r in roots]
    except DatasetError as e:
        raise _ImageError(e.message, hint=e.hint) from None
    found = next((p for p in paths if files.exists(p) or os.path.isfile(p)), None)
    if found is None:
        if ctx.check_images:
            raise _ImageError(f"{where}: image file {name!r} not found in {roots[0]} nor "
                              f"beside {os.path.basename(src)}",
                              hint="put the images in images/ beside the XML; data stats, "
                                   "eval and convert --images none read the annotations alone")
        found = paths[0] if os.path.isdir(roots[0]) else paths[1]
    return found, name, int(size[0]), int(size[1])


def _plain_box(el: Any, wh: tuple[int, int], flag_names: list[str],
               known: dict[str, None] | None) -> tuple | None:
    """What :func:`_read_shape` returns for the common ``<box>``: not rotated, inside its
    image, attributes only true/false flags of ``flag_names``; None for anything else (then
    ``_read_shape`` reads it and names any problem). Half of a CVAT read without it."""
    get = el.get
    label = (get("label") or "").strip()
    occluded = get("occluded", "0")
    if (not label or (known is not None and label not in known) or occluded not in ("0", "1")
            or get("rotation") not in (None, "0", "0.0")):
        return None
    try:
        x1, y1, x2, y2 = float(get("xtl")), float(get("ytl")), float(get("xbr")), float(
            get("ybr"))
    except (TypeError, ValueError):
        return None
    w, h = wh
    # (NaN and infinities fail these comparisons too)
    if not (-1 <= x1 <= x2 <= w + 1 and -1 <= y1 <= y2 <= h + 1) or x2 <= 0 or y2 <= 0 \
            or x1 >= w or y1 >= h:
        return None
    flags = dict.fromkeys(flag_names, False)
    for a in el:
        if a.tag != "attribute":
            continue
        key = a.get("name", "")
        value = _BOOL.get((a.text or "").strip().lower())
        if key not in flags or value is None:
            return None
        flags[key] = flags[key] or value
    flags["occluded"] = flags["occluded"] or occluded == "1"
    return label, [x1, y1, x2, y2], None, None, flags, None


def _read_shape(el: Any, tag: str, where: str, wh: tuple[int, int], flag_names: list[str],
                known: dict[str, None] | None, stats: dict[str, Counter]) -> tuple:
    """One ``<box>`` or ``<polygon>``: ``(label, xyxy, quad | None, cxcywha | None, flags,
    score | None)`` (raises DatasetError naming ``where`` if it is bad)."""
    label = (el.get("label") or "").strip()
    if not label:
        raise DatasetError(f"{where}: missing label")
    if known is not None and label not in known:
        raise DatasetError(f"{where}: unknown class name {label!r} (known: "
                           f"{', '.join(list(known)[:20])}{' ...' if len(known) > 20 else ''})")
    occluded = el.get("occluded", "0").strip()
    if occluded not in ("0", "1"):
        raise DatasetError(f"{where}: occluded: expected 0 or 1, got {occluded[:20]!r}")
    flags = dict.fromkeys(flag_names, False)
    score = None
    for a in (c for c in el if c.tag == "attribute"):
        key, text = a.get("name", ""), (a.text or "").strip()
        if key in flags:
            value = _BOOL.get(text.lower())
            if value is None:
                raise DatasetError(f"{where}/attribute[{key}]: expected true or false, got "
                                   f"{text[:20]!r}")
            flags[key] = flags[key] or value
        elif key == "score":
            if not math.isfinite(score := _float(text)):
                raise DatasetError(f"{where}/attribute[score]: expected a number, got "
                                   f"{text[:20]!r}")
        else:
            stats["attributes"][key] += 1
    flags["occluded"] = flags["occluded"] or occluded == "1"
    (w, h), quad, rot = wh, None, None
    if tag == "box":
        x1, y1, x2, y2 = box = [_number(el, key, where) for key in _BOX_KEYS]
        if x2 < x1 or y2 < y1:
            coords = ", ".join(f"{v:g}" for v in box)
            raise DatasetError(f"{where}: {REASONS[1]} (xtl, ytl, xbr, ybr [{coords}])")
        deg = _number(el, "rotation", where) if el.get("rotation") is not None else 0.0
        if deg % 360.0 == 0.0:
            if x1 < -1 or y1 < -1 or x2 > w + 1 or y2 > h + 1:
                coords = ", ".join(f"{v:g}" for v in box)
                raise DatasetError(f"{where}: {REASONS[2]} (box xyxy [{coords}], image {w}x{h})")
            return label, box, None, None, flags, score
        a = math.radians(deg)
        rot = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, a)
        c, s = abs(math.cos(a)), abs(math.sin(a))  # the half extents of the turned box
        ex, ey = (rot[2] * c + rot[3] * s) / 2, (rot[2] * s + rot[3] * c) / 2
        box = [rot[0] - ex, rot[1] - ey, rot[0] + ex, rot[1] + ey]
    else:
        pts = _points(el, where)
        box = [min(pts[0::2]), min(pts[1::2]), max(pts[0::2]), max(pts[1::2])]
        if len(pts) == 8:
            quad = pts
        else:
            stats["polygons"][len(pts) // 2] += 1
    if not all(map(math.isfinite, box)):  # a rotated box too large for floats
        raise DatasetError(f"{where}: {REASONS[0]}")
    if box[2] <= 0 or box[3] <= 0 or box[0] >= w or box[1] >= h:
        raise DatasetError(f"{where}: {'rotated box' if rot else tag} lies entirely outside "
                           f"the image ({w}x{h})")
    return label, box, quad, rot, flags, score


def _in_split(el: Any, split: str) -> bool:
    a, b = (el.get("subset") or "").strip().lower(), split.lower()
    return a == b or (a in _VAL and b in _VAL)


def read_cvat(path: Path, ctx: ReadContext) -> Dataset:
    """Read a CVAT for images 1.1 export: a folder with ``annotations.xml`` or the XML file
    (see the module docstring for the layout and conventions)."""
    src = str(Path(path) / XML_NAME if Path(path).is_dir() else path)
    try:
        with open(src, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DatasetError(f"{src}: cannot read ({e.strerror or e})",
                           hint="a CVAT for images 1.1 export holds annotations.xml") from e
    elements = (root := _parse_xml(data, src)).findall("image")
    if not elements and root.find("track") is not None:
        raise DatasetError(f"{src}: holds <track> elements (CVAT for video 1.1), not <image>",
                           hint="export the task as 'CVAT for images 1.1'")
    if ctx.split and not any(_in_split(el, ctx.split) for el in elements):
        subsets = sorted({s for el in elements if (s := (el.get("subset") or "").strip())})
        raise DatasetError(f"{src}: split {ctx.split!r} not found (subsets: "
                           f"{', '.join(subsets) or 'none: no <image> has a subset'})")
    declared, checkbox = _meta_labels(root)
    flag_names = [*_BASE_FLAGS, *sorted(checkbox - {*_BASE_FLAGS, "score", ""})]
    known = dict.fromkeys(ctx.class_names) if ctx.class_names is not None else None
    base = os.path.dirname(os.path.abspath(src))
    roots, files = (os.path.join(base, "images"), base), FileIndex()
    heads, shapes, counts = [], [], []  # (path, name, w, h, element); shape tuples; per image
    stats: dict[str, Counter] = {k: Counter() for k in ("skipped", "attributes", "polygons")}
    for i, el in enumerate(ctx.progress(elements, "reading CVAT", len(elements))):
        if ctx.split and not _in_split(el, ctx.split):
            continue
        try:
            head = _image_head(el, i, src, roots, files, ctx)
        except _ImageError as e:
            ctx.fail(e.message, e.hint)
            continue
        heads.append((*head, el))
        before = len(shapes)
        seen: Counter = Counter()
        for child in el:
            tag = child.tag if isinstance(child.tag, str) else ""
            seen[tag] += 1
            if tag not in ("box", "polygon"):
                stats["skipped"][tag] += 1
                continue
            if tag == "box" and (shape := _plain_box(child, head[2:4], flag_names, known)):
                shapes.append(shape)
                continue
            where = f"{src}: image[{i}]/{tag}[{seen[tag] - 1}]"
            try:
                shapes.append(_read_shape(child, tag, where, head[2:4], flag_names, known,
                                          stats))
            except DatasetError as e:
                ctx.fail(e.message, e.hint)
        counts.append(len(shapes) - before)
    names = list(ctx.class_names) if ctx.class_names is not None else list(declared or [])
    if ctx.class_names is None and (extra := sorted({s[0] for s in shapes} - set(names))):
        ctx.notices.append(f"{src}: labels used but not declared in <meta>, added as the last "
                           f"classes: {', '.join(extra[:20])}{' ...' * (len(extra) > 20)}")
        names += extra
    _notices(src, stats, ctx)
    return Dataset(_samples(shapes, counts, heads, names, flag_names), names,
                   {"format": "cvat", **({"split": ctx.split} if ctx.split else {})})


def _samples(shapes: list[tuple], counts: list[int], heads: list, names: list[str],
             flag_names: list[str]) -> list[Sample]:
    n = len(shapes)
    index = {nm: i for i, nm in enumerate(names)}
    labels = np.fromiter((index[s[0]] for s in shapes), np.int64, n)
    xyxy = np.asarray([s[1] for s in shapes], np.float64).reshape(n, 4)
    polys = None
    if any(s[2] is not None or s[3] is not None for s in shapes):
        x1, y1, x2, y2 = xyxy.T
        polys = np.stack([x1, y1, x2, y1, x2, y2, x1, y2], axis=1).reshape(n, 4, 2)
        for i, s in enumerate(shapes):
            if s[2] is not None:
                polys[i] = np.reshape(s[2], (4, 2))
        turned = [i for i, s in enumerate(shapes) if s[3] is not None]
        if turned:
            from danlu.boxes.convert import cxcywha_to_polygon

            polys[turned] = cxcywha_to_polygon(np.array([shapes[i][3] for i in turned]))
            xyxy[turned] = np.concatenate([polys[turned].min(1), polys[turned].max(1)], 1)
        polys = np.ascontiguousarray(polys, np.float32)
    scores = (np.array([1.0 if s[5] is None else s[5] for s in shapes], np.float32)
              if any(s[5] is not None for s in shapes) else None)
    flags = {k: np.fromiter((s[4][k] for s in shapes), bool, n) for k in flag_names}
    xyxy32 = np.ascontiguousarray(xyxy, np.float32)
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
    samples = []
    for j, (path, name, w, h, el) in enumerate(heads):
        a, b = starts[j], starts[j + 1]
        det = make_detections(xyxy32[a:b], labels[a:b],
                              scores=None if scores is None else scores[a:b],
                              polygons=None if polys is None else polys[a:b],
                              flags={k: v[a:b] for k, v in flags.items()})
        rel, cid = name.replace("\\", "/"), (el.get("id") or "").strip()
        meta: dict[str, Any] = {"cvat_name": rel}
        if cid.isdigit() and len(cid) < 19:
            meta["cvat_id"] = int(cid)
        if split := (el.get("subset") or "").strip():
            meta["split"] = split
        samples.append(Sample(path, w, h, det, id=os.path.splitext(rel)[0], meta=meta))
    return samples


def _notices(src: str, stats: dict[str, Counter], ctx: ReadContext) -> None:
    notes = [f"skipped {c} <{t}> element{'s' * (c != 1)} (danlu reads <box> and <polygon>)"
             for t, c in sorted(stats["skipped"].items())]
    if stats["polygons"]:
        notes.append(f"read {sum(stats['polygons'].values())} polygons of other than 4 points "
                     "as their enclosing boxes")
    if stats["attributes"]:
        notes.append("attributes not kept: " + ", ".join(
            f"{k or '(no name)'} ({c})" for k, c in sorted(stats["attributes"].items())[:20]))
    ctx.notices.extend(f"{src}: {n}" for n in notes)


__all__ = ["read_cvat", "write_cvat", "is_cvat", "cvat_xml"]
