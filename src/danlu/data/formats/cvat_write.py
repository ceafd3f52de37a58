"""CVAT for images 1.1 writing: ``annotations.xml`` and the images beside it.

What is written, as :mod:`danlu.data.formats.cvat` reads it back: ``<box>`` for an
axis-aligned box; for an oriented one ``<box rotation>`` when that box reads back as its
polygon (a rectangle from the same corner, to ``max(1e-4, 1e-6 |x|)`` px), else ``<polygon>``
(its 4 points). Flags other than ``occluded`` are checkbox attributes declared in ``<meta>``;
scores an attribute ``score``.
"""

from __future__ import annotations

import html
import math
import os
import re
from pathlib import Path

import numpy as np

from danlu.data.formats._common import (
    fmt_num,
    image_names,
    place_image,
    safe_join_str,
)
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections

XML_NAME = "annotations.xml"
_BOX_KEYS = ("xtl", "ytl", "xbr", "ybr")
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _esc(text: str, what: str) -> str:
    """``text`` quoted for an XML attribute value or element text."""
    if _NOT_XML.search(text):
        raise DatasetError(f"{what} {text[:40]!r}: holds characters XML cannot carry")
    return html.escape(text).replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")


def _names(ds: Dataset) -> list[str]:
    """The names read from CVAT (``meta["cvat_name"]``, sub-folders kept) when every sample
    has one that is safe, unique and names its image file; else :func:`image_names`."""
    got = [s.meta.get("cvat_name") if isinstance(s.meta, dict) else None for s in ds.samples]
    try:
        if len(set(got)) == len(got) and all(
                isinstance(s.image, (str, os.PathLike)) and isinstance(nm, str)
                and os.path.basename(nm) == Path(s.image).name and safe_join_str("r", nm, "")
                for s, nm in zip(ds.samples, got, strict=True)):
            return got  # type: ignore[return-value]
    except DatasetError:
        pass
    return image_names(ds)


def _geometry(det: Detections) -> list[str]:
    """Per box: the ``<box>`` or ``<polygon>`` tag and coordinate attributes."""
    def box(b: list[float]) -> str:
        return "box" + "".join(f' {k}="{fmt_num(v)}"' for k, v in zip(_BOX_KEYS, b, strict=True))

    if det.polygons is None or not len(det):
        return [box(b) for b in det.xyxy.astype(np.float64).tolist()]
    from danlu.boxes.convert import cxcywha_to_polygon, xyxy_to_polygon

    p = det.polygons.astype(np.float64)
    lo, hi = p.min(axis=1), p.max(axis=1)
    tol = np.maximum(1e-4, 1e-6 * np.abs(p).max(axis=(1, 2)))
    axis = np.abs(p - xyxy_to_polygon(np.concatenate([lo, hi], 1))).max(axis=(1, 2)) <= tol
    e = p[:, 1] - p[:, 0] + p[:, 2] - p[:, 3]  # twice the width edge, from the first corner
    f = p[:, 2] - p[:, 1] + p[:, 3] - p[:, 0]  # twice the height edge
    fit = np.stack([*p.mean(axis=1).T, np.hypot(*e.T) / 2, np.hypot(*f.T) / 2,
                    np.arctan2(e[:, 1], e[:, 0])], axis=1)
    rect = np.abs(cxcywha_to_polygon(fit) - p).max(axis=(1, 2)) <= tol
    out = []
    for i, (cx, cy, w, h, a) in enumerate(fit.tolist()):
        if axis[i]:
            out.append(box([*lo[i].tolist(), *hi[i].tolist()]))
        elif rect[i] and (deg := fmt_num(round(math.degrees(a) % 360.0, 4) % 360.0)) != "0":
            out.append(box([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
                       + f' rotation="{deg}"')
        else:
            pts = ";".join(f"{fmt_num(x)},{fmt_num(y)}" for x, y in p[i].tolist())
            out.append(f'polygon points="{pts}"')
    return out


def cvat_xml(ds: Dataset, names: list[str]) -> str:
    """The ``annotations.xml`` text of ``ds``, its images named ``names``."""
    flag_names = sorted({k for s in ds.samples for k in s.detections.flags} - {"occluded",
                                                                                 "score"})
    scores = any(s.detections.scores is not None for s in ds.samples)
    spec = "".join(f"<attribute><name>{_esc(k, 'flag')}</name><mutable>False</mutable>"
                   "<input_type>checkbox</input_type><default_value>false</default_value>"
                   "<values>false</values></attribute>" for k in flag_names)
    if scores:
        spec += ("<attribute><name>score</name><mutable>False</mutable><input_type>text"
                 "</input_type><default_value>1</default_value><values></values></attribute>")
    out = ['<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n  <version>1.1</version>\n'
           f"  <meta>\n    <task>\n      <size>{len(ds)}</size>\n      <mode>annotation</mode>"
           "\n      <labels>\n"]
    out += [f"        <label><name>{_esc(c, 'class name')}</name><type>any</type><attributes>"
            f"{spec}</attributes></label>\n" for c in ds.class_names]
    out.append("      </labels>\n    </task>\n  </meta>\n")
    labels = [f'label="{_esc(c, "class name")}" source="manual"' for c in ds.class_names]
    ids = [s.meta.get("cvat_id") if isinstance(s.meta, dict) else None for s in ds.samples]
    if not all(type(i) is int and i >= 0 for i in ids) or len(set(ids)) != len(ids):
        ids = list(range(len(ds)))
    for s, name, iid in zip(ds.samples, names, ids, strict=True):
        split = s.meta.get("split") if isinstance(s.meta, dict) else None
        subset = f' subset="{_esc(str(split), "split")}"' if split else ""
        out.append(f'  <image id="{iid}" name="{_esc(name, "image name")}"{subset} '
                   f'width="{int(s.width)}" height="{int(s.height)}">\n')
        d = s.detections
        occluded = d.flag("occluded").astype(int).tolist()
        flags = {_esc(k, "flag"): d.flag(k).tolist() for k in flag_names}
        score = d.scores.tolist() if d.scores is not None else [1.0] * len(d)
        for i, geo in enumerate(_geometry(d)):
            attrs = "".join(f'\n      <attribute name="{k}">{"true" if v[i] else "false"}'
                            "</attribute>" for k, v in flags.items())
            if scores:
                attrs += f'\n      <attribute name="score">{score[i]!r}</attribute>'
            tag = geo.split(" ", 1)[0]
            out.append(f"    <{tag} {labels[int(d.labels[i])]} occluded=\"{occluded[i]}\""
                       f'{geo[len(tag):]} z_order="0">{attrs}\n    </{tag}>\n')
        out.append("  </image>\n")
    out.append("</annotations>\n")
    return "".join(out)


def write_cvat(ds: Dataset, root: Path, *, images: str = "copy",
               progress=None) -> None:  # noqa: ANN001 - a progress wrapper
    """Write ``ds`` as ``root/annotations.xml`` and ``root/images/`` (made atomic by the
    caller). ``images``: ``copy``, ``symlink`` or ``none`` (then no ``images/`` folder)."""
    (root := Path(root)).mkdir(parents=True, exist_ok=True)
    items = list(zip(ds.samples, names := _names(ds), strict=True))
    if progress is not None:
        items = progress(items, "writing CVAT", len(items))
    for sample, name in items:
        place_image(sample, Path(safe_join_str(str(root / "images"), name, "image name")),
                    images)
    (root / XML_NAME).write_text(cvat_xml(ds, names), encoding="utf-8")


__all__ = ["write_cvat", "cvat_xml"]
