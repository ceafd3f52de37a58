"""Notebook views of the vocabulary: what Jupyter shows for a :class:`~danlu.structures.Sample`,
a :class:`~danlu.structures.Dataset` and :class:`~danlu.structures.Detections`.

The classes' ``_repr_png_`` / ``_repr_html_`` methods are thin and call the functions here (by
name, when a notebook asks: see :func:`danlu.structures._notebook`). Pictures are drawn by
:func:`danlu.data.show.draw_detections`, the drawer of ``danlu data show`` and ``danlu
predict``, and counts come from :func:`danlu.data.stats.dataset_stats`.

Conventions:

* a picture is scaled down (never up) so that its longest side is at most ``max_side``
  pixels (:data:`DISPLAY_MAX_SIDE` for one sample, :data:`THUMB_MAX_SIDE` for a thumbnail):
  the image is resized first and the boxes scaled with it, then drawn, so outlines stay sharp;
* a picture that cannot be made (no image, a missing or undecodable file) is None, never an
  exception: IPython then shows the next representation (the text ``repr``);
* every name or id put into HTML is escaped.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Detections, Sample
    >>> s = Sample(np.zeros((1000, 2000, 3), np.uint8), 2000, 1000,
    ...            Detections([[100, 100, 900, 600]], [0]))
    >>> display_array(s.load_image(), s.detections).shape  # longest side 800
    (400, 800, 3)
    >>> sample_png(Sample("no/such/file.png", 10, 10)) is None
    True
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from danlu.data.show import class_colour, draw_detections, shown_text
from danlu.data.stats import dataset_stats
from danlu.data.synth import encode_png
from danlu.errors import DatasetError
from danlu.structures import Dataset, Detections, Sample

#: The longest side, in pixels, of a sample's picture in a notebook.
DISPLAY_MAX_SIDE = 800
#: The longest side, in pixels, of a thumbnail in a dataset's summary.
THUMB_MAX_SIDE = 240
#: How many thumbnails a dataset's summary shows (its first samples).
THUMBNAILS = 6
#: How many rows a table shows before ``... and K more``.
MAX_ROWS = 20

# What a picture that cannot be made raises: DatasetError from Sample.load_image, OSError /
# ValueError from PIL on odd arrays or coordinates.
_UNDRAWABLE = (DatasetError, OSError, ValueError)


def display_array(image: np.ndarray, detections: Detections,
                  class_names: Sequence[str] | None = None, *,
                  max_side: int | None = DISPLAY_MAX_SIDE) -> np.ndarray:
    """``image`` with ``detections`` drawn, scaled down to fit ``max_side``.

    Args:
        image: ``HxWx3`` (or ``HxW``) uint8 array; boxes are in its pixels. Not modified.
        detections: the boxes to draw (none: the picture is the image itself, resized).
        class_names: names indexed by label; labels are shown as numbers when None.
        max_side: the longest side of the result in pixels (None: the image's own size). The
            image is resized with Pillow's Lanczos filter, each side to the nearest pixel, and
            the boxes are scaled by the same per-axis factors before they are drawn.

    Returns:
        A new ``hxwx3`` uint8 RGB array.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False)
    h, w = arr.shape[:2]
    if max_side is not None and max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.LANCZOS))
        detections = detections.scale(size[0] / w, size[1] / h)
    if not len(detections):
        return arr.copy()
    return draw_detections(arr, detections, class_names)


def sample_png(sample: Sample, class_names: Sequence[str] | None = None, *,
               max_side: int | None = DISPLAY_MAX_SIDE) -> bytes | None:
    """PNG bytes of ``sample``'s image with its boxes drawn (:func:`display_array`), or None
    when the image cannot be read or drawn."""
    try:
        return encode_png(display_array(sample.load_image(), sample.detections, class_names,
                                    max_side=max_side))
    except _UNDRAWABLE:
        return None


def _img_tag(png: bytes, alt: str) -> str:
    return (f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" '
            f'alt="{html.escape(alt)}" style="display:block">')


def _count(n: int, noun: str) -> str:
    """``"1 box"``, ``"3 boxes"``, ``"0 images"`` (the nouns used here: box, image, class)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun[-1] in 'sx' else 's'}"


def _more(shown: int, total: int, what: str) -> str:
    left = total - shown
    return f"<p>... and {left} more {what}</p>" if left > 0 else ""


def dataset_html(ds: Dataset, *, thumbnails: int = THUMBNAILS,
                 max_side: int = THUMB_MAX_SIDE, max_classes: int = MAX_ROWS) -> str:
    """An HTML summary of ``ds``: numbers of images, boxes and classes, a table of the
    classes (colour as drawn, name, boxes, images with one; the first ``max_classes``), and
    thumbnails of the first ``thumbnails`` samples with their boxes and class names drawn,
    embedded as base64 PNG (a sample whose image cannot be read gets a line of text instead).

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Dataset, Detections, Sample
        >>> s = Sample(np.zeros((30, 40, 3), np.uint8), 40, 30, Detections([[2, 2, 20, 20]], [1]))
        >>> page = dataset_html(Dataset([s], ["a<b", "dog"]))
        >>> "1 image, 1 box, 2 classes" in page, "a&lt;b" in page, page.count("<img")
        (True, True, 1)
    """
    e = html.escape
    stats = dataset_stats(ds)
    head = (f"<p><b>Dataset</b>: {_count(stats['num_images'], 'image')}, "
            f"{_count(stats['num_boxes'], 'box')}, {_count(stats['num_classes'], 'class')} "
            f"({_count(stats['empty_images'], 'image')} without boxes)</p>")
    per = stats["per_class"]
    rows = "".join(
        f"<tr><td><span style='background:rgb{class_colour(i)};padding:0 .6em'></span></td>"
        f"<td style='text-align:left'>{e(name)}</td><td>{per[name]['boxes']}</td>"
        f"<td>{per[name]['images']}</td></tr>"
        for i, name in enumerate(ds.class_names[:max_classes]))
    k = len(ds.class_names)
    table = ("<table><tr><th></th><th>class</th><th>boxes</th><th>images</th></tr>"
             f"{rows}</table>{_more(min(max_classes, k), k, 'classes')}" if k else "")
    shown = ds.samples[:thumbnails]
    figures = []
    for s in shown:
        png = sample_png(s, ds.class_names, max_side=max_side)
        caption = f"{s.id} — {s.width}x{s.height}, {_count(len(s.detections), 'box')}"
        picture = (_img_tag(png, str(s.id)) if png is not None
                   else "<div style='padding:1em;border:1px dashed #999'>image unavailable</div>")
        figures.append(f"<figure style='margin:0'>{picture}<figcaption style='font-size:11px'>"
                       f"{e(caption)}</figcaption></figure>")
    grid = (f"<p>{e(shown_text(len(shown), len(ds), len(ds)))}</p>"
            "<div style='display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start'>"
            + "".join(figures) + "</div>") if shown else ""
    return f"<div class='danlu-dataset'>{head}{table}{grid}</div>"


def detections_html(det: Detections, class_names: Sequence[str] | None = None, *,
                    max_rows: int = MAX_ROWS) -> str:
    """An HTML table of ``det``: one row per box (the first ``max_rows``, then ``... and K
    more``) with its index, ``xyxy`` (one decimal), label (and class name when
    ``class_names`` has it), score (three decimals) and the names of its true flags.

    Example:
        >>> from danlu.structures import Detections
        >>> page = detections_html(Detections([[0, 0, 4, 4]] * 3, [0, 1, 0], scores=[.9, .5, .1]),
        ...                        max_rows=2)
        >>> page.count("<tr>"), "and 1 more boxes" in page, "0.500" in page
        (3, True, True)
    """
    e = html.escape
    n = len(det)
    kinds = ["with scores"] if det.scores is not None else []
    kinds += ["oriented"] if det.polygons is not None else []
    head = f"<p><b>Detections</b>: {_count(n, 'box')}{', ' if kinds else ''}{', '.join(kinds)}</p>"
    if not n:
        return f"<div class='danlu-detections'>{head}</div>"
    cols = ["#", "x1", "y1", "x2", "y2", "label"]
    cols += ["score"] if det.scores is not None else []
    cols += ["flags"] if det.flags else []
    rows = []
    for i in range(min(n, max_rows)):
        label = int(det.labels[i])
        name = (f" {class_names[label]}" if class_names is not None
                and 0 <= label < len(class_names) else "")
        cells = [str(i), *(f"{float(v):.1f}" for v in det.xyxy[i]), f"{label}{name}"]
        if det.scores is not None:
            cells.append(f"{float(det.scores[i]):.3f}")
        if det.flags:
            cells.append(", ".join(k for k, v in det.flags.items() if v[i]))
        rows.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    header = "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"
    return (f"<div class='danlu-detections'>{head}<table>{header}{''.join(rows)}</table>"
            f"{_more(min(n, max_rows), n, 'boxes')}</div>")


def show_image(image: Any, detections: Detections, class_names: Sequence[str] | None = None, *,
               max_side: int | None = DISPLAY_MAX_SIDE) -> Image.Image:
    """A Pillow image (notebooks show it, ``.save`` writes it) of :func:`display_array`.

    ``image`` is an ``HxWx3`` / ``HxW`` uint8 array, a Pillow image, a path or encoded bytes
    (decoded as :meth:`~danlu.structures.Sample.load_image` decodes: a file that cannot be
    read raises :class:`~danlu.errors.DatasetError`).
    """
    if hasattr(image, "getbands"):  # a Pillow image
        image = np.asarray(image.convert("RGB"))
    elif not isinstance(image, np.ndarray):
        image = Sample(image, 0, 0).load_image()
    return Image.fromarray(display_array(image, detections, class_names, max_side=max_side))


__all__ = ["display_array", "sample_png", "dataset_html", "detections_html", "show_image",
           "DISPLAY_MAX_SIDE", "THUMB_MAX_SIDE", "THUMBNAILS", "MAX_ROWS"]
