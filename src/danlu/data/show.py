"""Draw detections on images and write a browsable gallery of a dataset.

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
    marked = detections.flag("difficult") | detections.flag("ignore")
    for i in range(len(detections)):
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
        _caption(draw, name, anchor, colour, font, canvas.size)
    return np.asarray(canvas)


def _caption(draw: ImageDraw.ImageDraw, text: str, anchor: tuple[float, float],
             colour: tuple[int, int, int], font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
             size: tuple[int, int]) -> None:
    """Text on a filled label above ``anchor`` (below it when there is no room), inside."""
    left, t, r, b = draw.textbbox((0, 0), text, font=font)
    tw, th = r - left + 4, b - t + 2
    x = min(max(anchor[0], 0), max(size[0] - tw, 0))
    y = anchor[1] - th if anchor[1] - th >= 0 else anchor[1]
    y = min(max(y, 0), max(size[1] - th, 0))
    draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=colour)
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


def _select_classes(ds: Dataset, classes: Sequence[str] | None) -> np.ndarray | None:
    if classes is None:
        return None
    index = ds.class_to_index
    missing = [c for c in classes if c not in index]
    if missing:
        raise ConfigError(f"unknown class(es): {', '.join(missing)}",
                          hint="known classes: " + ", ".join(ds.class_names))
    return np.array([index[c] for c in classes], np.int64)


def show_dataset(
    ds: Dataset,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    classes: Sequence[str] | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> Path:
    """Write one PNG per image with its boxes drawn, plus a self-contained HTML gallery.

    Args:
        ds: the dataset (images are paths, bytes or arrays).
        out_dir: output folder (created); gets ``<id>.png`` per image and ``index.html``,
            which embeds every picture as base64 so it can be moved or mailed alone.
        limit: at most this many images (the first ones, after the class filter).
        classes: only boxes of these class names, and only images that contain one.
        progress: optional wrapper around the iteration (e.g. a progress bar).

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
    keep_labels = _select_classes(ds, classes)
    chosen = []
    for i, s in enumerate(ds.samples):
        if keep_labels is not None and not np.isin(s.detections.labels, keep_labels).any():
            continue
        chosen.append(i)
        if limit is not None and len(chosen) >= limit:
            break
    names = unique_names(ds.samples[i] for i in chosen)
    figures = []
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
            n = ds.class_names[label] if 0 <= label < len(ds.class_names) else str(label)
            counts[n] = counts.get(n, 0) + 1
        caption = f"{s.id} — {s.width}x{s.height}, {len(det)} boxes" + (
            ": " + ", ".join(f"{n} {c}" for n, c in sorted(counts.items())) if counts else "")
        figures.append(
            f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
            f'alt="{html.escape(str(s.id))}" loading="lazy"><figcaption>'
            f"{html.escape(caption)}</figcaption></figure>")
    legend = " ".join(
        f'<span style="background:rgb{class_colour(i)}">'
        f"{html.escape(n)}</span>" for i, n in enumerate(ds.class_names))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>danlu dataset</title><style>"
        "body{font-family:sans-serif;margin:1em;background:#fafafa}"
        "figure{display:inline-block;margin:6px;vertical-align:top;max-width:420px}"
        "img{max-width:420px;height:auto;border:1px solid #ccc}"
        "figcaption{font-size:12px;word-break:break-all}"
        ".legend span{padding:2px 6px;margin:2px;color:#000;display:inline-block}"
        "</style></head><body>"
        f"<h1>{len(figures)} of {len(ds)} images, {len(ds.class_names)} classes</h1>"
        f"<p class='legend'>{legend}</p>" + "\n".join(figures) + "</body></html>\n")
    index = out / "index.html"
    write_bytes_atomic(index, page.encode())
    return index


__all__ = ["draw_detections", "show_dataset", "class_colour", "PALETTE", "safe_name",
           "unique_names"]
