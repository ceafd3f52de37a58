"""Draw detections on images and write a browsable gallery of a dataset (the first
:data:`DEFAULT_LIMIT` images unless told otherwise; its legend names only the classes drawn).

Example:
    >>> import numpy as np
    >>> from danlu.structures import Detections
    >>> img = np.zeros((64, 64, 3), np.uint8)
    >>> det = Detections(np.array([[4, 4, 40, 30]]), np.array([1]), scores=np.array([0.87]))
    >>> out = draw_detections(img, det, ["cat", "dog"])
    >>> out.shape, bool(out.any()), bool(img.any())  # the input is not modified
    ((64, 64, 3), True, False)
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from danlu.data._atomic import write_bytes_atomic
from danlu.data.synth import encode_png
from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample

# Tableau 20: distinct, readable colours; class k gets PALETTE[k % 20].
PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[misc]
    for h in ("1f77b4 ff7f0e 2ca02c d62728 9467bd 8c564b e377c2 7f7f7f bcbd22 17becf "
              "aec7e8 ffbb78 98df8a ff9896 c5b0d5 c49c94 f7b6d2 c7c7c7 dbdb8d 9edae5").split()
)


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of class ``label`` (the same in every picture)."""
    return PALETTE[int(label) % len(PALETTE)]


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    class_names: Sequence[str] | None = None,
    *,
    line_width: int | None = None,
    font_size: int | None = None,
) -> np.ndarray:
    """Draw boxes (or oriented polygons) with their class names and scores.

    Each class has one colour (:func:`class_colour`). A box is drawn as its ``xyxy`` outline,
    an oriented box as its 4-point polygon; the caption is ``"name"`` or ``"name 0.87"`` when
    scores are present; boxes flagged ``difficult`` or ``ignore`` get a ``"*"`` after the name.

    Order and readability: outlines are drawn in ascending score order, then every caption
    over them, again in ascending order, so the best box and its caption end on top. A
    caption is text on a filled label of the class colour (black text on light colours,
    white on dark ones), placed above its box, or just inside the box's top when the box
    touches the image's top edge, and always inside the image. Captions are placed best box
    first; one that would cover an already placed caption moves down, a caption height at a
    time (a few tries), so the captions of a box found under several classes stack instead
    of overlapping. Without scores, the detections' own order is used.

    Args:
        image: ``HxWx3`` (or ``HxW``) uint8 array; not modified.
        detections: boxes in ``xyxy`` pixels of ``image``.
        class_names: names indexed by label; labels are shown as numbers when None or out
            of range.
        line_width: outline width in pixels (default: scales with the image, at least 1).
        font_size: caption size in pixels (default: scales with the image, at least 10).

    Returns:
        A new ``HxWx3`` uint8 RGB array.

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Detections
        >>> poly = np.array([[[10, 2], [30, 12], [22, 28], [2, 18]]], np.float32)
        >>> det = Detections(None, np.array([0]), polygons=poly)
        >>> draw_detections(np.zeros((32, 32, 3), np.uint8), det, ["plane"]).shape
        (32, 32, 3)
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    canvas = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8, copy=False))
    canvas = canvas.copy()
    side = min(canvas.size)
    lw = line_width or max(1, round(side / 256))
    font = _font(font_size or max(10, round(side / 40)))
    draw = ImageDraw.Draw(canvas)
    order = _drawing_order(detections)
    captions: dict[int, tuple[str, tuple[float, float], tuple[int, int, int]]] = {}
    marked = detections.flag("difficult") | detections.flag("ignore")
    for i in order.tolist():
        label = int(detections.labels[i])
        colour = class_colour(label)
        name = (class_names[label] if class_names is not None and 0 <= label < len(class_names)
                else str(label))
        if marked[i]:
            name += "*"
        if detections.scores is not None:
            name += f" {float(detections.scores[i]):.2f}"
        if detections.polygons is not None:
            pts = [tuple(map(float, p)) for p in detections.polygons[i]]
            draw.polygon(pts, outline=colour, width=lw)
            anchor = min(pts, key=lambda p: (p[1], p[0]))
        else:
            x1, y1, x2, y2 = map(float, detections.xyxy[i])
            # continuous xyxy: the last covered pixel is x2 - 1
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colour, width=lw)
            anchor = (x1, y1)
        captions[i] = (name, anchor, colour)
    placed: list[tuple[float, float, float, float]] = []
    spots: dict[int, tuple[float, float, float, float]] = {}
    for i in order[::-1].tolist():  # the best box chooses its caption's place first
        text, anchor, _ = captions[i]
        spots[i] = _caption_spot(draw, text, anchor, font, canvas.size, placed)
        placed.append(spots[i])
    for i in order.tolist():  # ... and is painted last, on top
        _caption(draw, captions[i][0], spots[i], captions[i][2], font)
    return np.asarray(canvas)


def _drawing_order(detections: Detections) -> np.ndarray:
    """The order :func:`draw_detections` paints ``detections`` in: ascending score (ties in
    their given order), so the best one ends on top; the given order without scores."""
    if detections.scores is None:
        return np.arange(len(detections))
    return np.argsort(np.asarray(detections.scores, np.float64), kind="stable")


def _overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]
              ) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _caption_spot(draw: ImageDraw.ImageDraw, text: str, anchor: tuple[float, float],
                  font: ImageFont.ImageFont | ImageFont.FreeTypeFont, size: tuple[int, int],
                  placed: Sequence[tuple[float, float, float, float]], tries: int = 4
                  ) -> tuple[float, float, float, float]:
    """The label rectangle ``(x0, y0, x1, y1)`` (exclusive ends) of ``text`` for a box whose
    top-left corner is ``anchor``: above it, or just inside its top when there is no room
    above; inside the image; moved down (at most ``tries`` label heights) while it would
    cover a rectangle of ``placed``."""
    left, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - left + 4, b - t + 2
    x = min(max(anchor[0], 0), max(size[0] - tw, 0))
    y0 = anchor[1] - th if anchor[1] - th >= 0 else anchor[1]
    bottom = max(size[1] - th, 0)
    first = (x, min(max(y0, 0), bottom))
    for k in range(tries + 1):
        y = min(max(y0 + k * th, 0), bottom)
        rect = (x, y, x + tw, y + th)
        if not any(_overlaps(rect, p) for p in placed):
            return rect
    return (first[0], first[1], first[0] + tw, first[1] + th)  # crowded: the first choice


def _caption(draw: ImageDraw.ImageDraw, text: str, rect: tuple[float, float, float, float],
             colour: tuple[int, int, int],
             font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    """``text`` on a filled label of ``colour`` filling ``rect``, in black or white,
    whichever contrasts with ``colour`` more."""
    x, y, x1, y1 = rect
    left, t, _, _ = draw.textbbox((0, 0), text, font=font)
    draw.rectangle([x, y, x1 - 1, y1 - 1], fill=colour)
    lum = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((x + 2 - left, y + 1 - t), text, fill=(0, 0, 0) if lum > 140 else (255, 255, 255),
              font=font)


def safe_name(name: object) -> str:
    """A file-name-safe version of a sample id (letters, digits, ``._-``; others become ``_``)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or "image"
    return s[:150]


def unique_names(samples: Iterable[Sample]) -> list[str]:
    """One distinct safe file stem per sample (its id; the index is appended on a clash)."""
    seen: set[str] = set()
    out = []
    for i, s in enumerate(samples):
        stem = safe_name(s.id if s.id is not None else f"{i:06d}")
        if stem in seen:
            stem = f"{stem}_{i}"
        seen.add(stem)
        out.append(stem)
    return out


#: How many images :func:`show_dataset` (and ``danlu data show``) draws unless told otherwise:
#: each is embedded in the page, so 600 images made an 83 MB page.
DEFAULT_LIMIT = 50


def _select_classes(ds: Dataset, classes: Sequence[str] | None) -> np.ndarray | None:
    if classes is None:
        return None
    index = ds.class_to_index
    missing = [c for c in classes if c not in index]
    if missing:
        raise ConfigError(f"unknown class(es): {', '.join(missing)}",
                          hint="known classes: " + ", ".join(ds.class_names))
    return np.array([index[c] for c in classes], np.int64)


class Selection(NamedTuple):
    """What :func:`show_dataset` draws: ``indices`` of the chosen samples (the first
    ``limit`` that match), ``matching`` (how many samples match the class filter, all of
    them without one) and ``labels`` (the kept class labels, None for all)."""

    indices: list[int]
    matching: int
    labels: np.ndarray | None

    @property
    def truncated(self) -> bool:
        """Whether the limit left matching images out."""
        return len(self.indices) < self.matching


def select_samples(ds: Dataset, *, limit: int | None = DEFAULT_LIMIT,
                   classes: Sequence[str] | None = None) -> Selection:
    """The samples :func:`show_dataset` draws: those with a box of ``classes`` (every sample
    when None), the first ``limit`` of them (``None`` or ``0``: all).

    Example:
        >>> from danlu.data.synth import synthesize
        >>> ds = synthesize("shapes", 5, seed=0, image_size=(64, 64), scale_range=(12, 20))
        >>> sel = select_samples(ds, limit=2)
        >>> sel.indices, sel.matching, sel.truncated
        ([0, 1], 5, True)
    """
    if limit is not None and limit < 0:
        raise ConfigError(f"limit must be 0 (every image) or more, got {limit}",
                          hint="use --limit N for the first N images, or --all")
    keep = _select_classes(ds, classes)
    matching = [i for i, s in enumerate(ds.samples)
                if keep is None or np.isin(s.detections.labels, keep).any()]
    return Selection(matching[:limit] if limit else matching, len(matching), keep)


def _name_of(label: int, class_names: Sequence[str]) -> str:
    return class_names[label] if 0 <= label < len(class_names) else str(label)


def show_dataset(
    ds: Dataset,
    out_dir: str | Path,
    *,
    limit: int | None = DEFAULT_LIMIT,
    classes: Sequence[str] | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> Path:
    """Write one PNG per image with its boxes drawn, plus a self-contained HTML gallery.

    Args:
        ds: the dataset (images are paths, bytes or arrays).
        out_dir: output folder (created); gets ``<id>.png`` per image and ``index.html``,
            which embeds every picture as base64 so it can be moved or mailed alone.
        limit: at most this many images, the first ones after the class filter
            (:data:`DEFAULT_LIMIT` by default; ``None`` or ``0`` for all). The page says how
            many it shows of how many (:func:`select_samples` gives the same counts).
        classes: only boxes of these class names, and only images that contain one.
        progress: optional wrapper around the iteration (e.g. a progress bar).

    The legend lists only the classes of the boxes drawn, with their counts.

    Returns:
        The path of ``index.html``.

    Example:
        >>> import tempfile
        >>> from danlu.data.synth import synthesize
        >>> ds = synthesize("shapes", 2, seed=0, image_size=(64, 64), scale_range=(12, 20))
        >>> page = show_dataset(ds, tempfile.mkdtemp(), classes=None)
        >>> page.name, len(list(page.parent.glob("*.png")))
        ('index.html', 2)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sel = select_samples(ds, limit=limit, classes=classes)
    chosen, keep_labels = sel.indices, sel.labels
    names = unique_names(ds.samples[i] for i in chosen)
    figures = []
    drawn: dict[int, int] = {}  # label -> boxes drawn, for the legend
    items: Iterable[int] = range(len(chosen))
    for k in progress(items) if progress is not None else items:
        s = ds.samples[chosen[k]]
        det = s.detections
        if keep_labels is not None:
            det = det.filter(labels=keep_labels.tolist())
        png = encode_png(draw_detections(s.load_image(), det, ds.class_names))
        write_bytes_atomic(out / f"{names[k]}.png", png)
        counts: dict[str, int] = {}
        for label in det.labels.tolist():
            drawn[label] = drawn.get(label, 0) + 1
            n = _name_of(label, ds.class_names)
            counts[n] = counts.get(n, 0) + 1
        caption = f"{s.id} — {s.width}x{s.height}, {len(det)} boxes" + (
            ": " + ", ".join(f"{n} {c}" for n, c in sorted(counts.items())) if counts else "")
        figures.append(
            f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
            f'alt="{html.escape(str(s.id))}" loading="lazy"><figcaption>'
            f"{html.escape(caption)}</figcaption></figure>")
    legend = " ".join(
        f'<span style="background:rgb{class_colour(label)}">'
        f"{html.escape(_name_of(label, ds.class_names))} {drawn[label]}</span>"
        for label in sorted(drawn)) or "no boxes drawn"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>danlu dataset</title><style>"
        "body{font-family:sans-serif;margin:1em;background:#fafafa}"
        "figure{display:inline-block;margin:6px;vertical-align:top;max-width:420px}"
        "img{max-width:420px;height:auto;border:1px solid #ccc}"
        "figcaption{font-size:12px;word-break:break-all}"
        ".legend span{padding:2px 6px;margin:2px;color:#000;display:inline-block}"
        "</style></head><body>"
        f"<h1>{html.escape(shown_text(len(figures), sel.matching, len(ds), classes))}</h1>"
        + (f"<p class='more'>{html.escape(MORE_HINT)}</p>" if sel.truncated else "")
        + f"<p class='legend'>{legend}</p>" + "\n".join(figures) + "</body></html>\n")
    index = out / "index.html"
    write_bytes_atomic(index, page.encode())
    return index


#: How to show more than the limit, as the page and ``danlu data show`` say it.
MORE_HINT = "the first ones only; --limit N (limit=N) for more, --all (limit=0) for every image"


def shown_text(shown: int, matching: int, total: int,
               classes: Sequence[str] | None = None) -> str:
    """``"50 of 600 images"``, or with a class filter ``"12 of 30 images with star (600 in
    the dataset)"``.

    Example:
        >>> shown_text(50, 600, 600), shown_text(2, 3, 9, ["star", "circle"])
        ('50 of 600 images', '2 of 3 images with star or circle (9 in the dataset)')
    """
    if classes is None:
        return f"{shown} of {total} images"
    return (f"{shown} of {matching} images with {' or '.join(classes)} "
            f"({total} in the dataset)")


__all__ = ["draw_detections", "show_dataset", "select_samples", "Selection", "shown_text",
           "DEFAULT_LIMIT", "MORE_HINT", "class_colour", "PALETTE", "safe_name", "unique_names"]
