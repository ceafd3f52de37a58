"""Cut large images into overlapping tiles, with DOTA_devkit ``ImgSplit`` semantics.

Tiling (the DOTA devkit's definition):

* the image is optionally rescaled by ``rate`` first (bicubic), and boxes with it;
* tile origins step by ``stride = tile_size - gap`` from 0; the last tile of each row and
  column is shifted back so that it ends at the image border (no tile hangs over the edge);
  an image smaller than a tile gets one tile at 0, padded with zeros at the right / bottom;
  every tile is ``tile_size x tile_size``;
* tiles are ordered column-major as in the devkit: for each ``x``, every ``y``;
* each object (4-point polygon, or axis-aligned box) is clipped to the tile. With ``f`` the
  clipped area over the object's area: ``f == 1`` keeps the object unchanged, ``f >=
  min_kept_fraction`` keeps the clipped object, ``0 < f < min_kept_fraction`` keeps it
  flagged ``difficult`` (``keep_partial="difficult"``, the devkit's label ``2``) or drops it
  (``keep_partial="drop"``); objects outside the tile or of zero area are left out;
* a clipped polygon is brought back to 4 points: with 4 vertices they are kept, otherwise the
  devkit's rule for 5 vertices (the two ends of the shortest edge merge into its midpoint) is
  applied until 4 remain, and a triangle gets the midpoint of its longest edge as a 4th point;
  the vertices are then rotated to best match the original's order (least squared distance)
  and keep the original's orientation.

Differences from the devkit, on purpose: coordinates stay float (the devkit truncates to int
and clamps to ``[1, tile_size]``), the threshold is inclusive (``>=``; the devkit uses ``>``),
the tile rectangle is the full ``[x, x + tile_size]`` (the devkit stops one pixel short at the
image border), and 6+ vertex clips are reduced instead of dropped.

Each tile sample records ``meta["tile"] = {"x", "y", "rate", "source", "source_width",
"source_height"}``: a point ``p`` in the tile is ``(p + (x, y)) / rate`` in the source image
(:func:`untile_detections`). Tile ids follow the devkit: ``"{id}__{rate}__{x}___{y}"``.

Example:
    >>> tile_origins(2000, 1100, tile_size=1024, gap=200)
    [(0, 0), (0, 76), (824, 0), (824, 76), (976, 0), (976, 76)]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from PIL import Image

from danlu.data.synth import encode_png
from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample


def tile_origins(width: int, height: int, tile_size: int = 1024,
                 gap: int = 200) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of the tiles covering a ``width x height`` image.

    DOTA_devkit order and rule: for each column start ``x`` (0, stride, 2 * stride, ...; the
    last one shifted back to ``width - tile_size``), every row start ``y`` likewise;
    ``stride = tile_size - gap``. An image smaller than a tile gets origin 0 on that axis.

    Example:
        >>> tile_origins(100, 50, tile_size=64, gap=16)
        [(0, 0), (36, 0)]
    """
    if tile_size <= 0 or not 0 <= gap < tile_size:
        raise ConfigError(f"need tile_size > 0 and 0 <= gap < tile_size, got tile_size="
                          f"{tile_size}, gap={gap}")
    return [(x, y) for x in _starts(int(width), tile_size, tile_size - gap)
            for y in _starts(int(height), tile_size, tile_size - gap)]


def _starts(length: int, size: int, stride: int) -> list[int]:
    out = []
    pos = 0
    while True:
        if pos + size >= length:
            out.append(max(length - size, 0))
            return out
        out.append(pos)
        pos += stride


# -- polygon geometry -------------------------------------------------------------------------
def clip_polygon_to_rect(poly: np.ndarray, x1: float, y1: float, x2: float,
                         y2: float) -> np.ndarray:
    """Clip a polygon ``[K, 2]`` to the rectangle ``[x1, x2] x [y1, y2]`` (Sutherland-Hodgman).

    Exact for convex polygons (a non-convex one may come back with zero-width bridges along
    the border; its area is still right). Returns ``[M, 2]`` float64 with consecutive
    duplicates and collinear vertices removed (``M = 0`` when nothing is inside).

    Example:
        >>> sq = np.array([[0, 0], [4, 0], [4, 4], [0, 4]], float)
        >>> clip_polygon_to_rect(sq, 2, -1, 9, 9).tolist()
        [[2.0, 0.0], [4.0, 0.0], [4.0, 4.0], [2.0, 4.0]]
    """
    pts = [tuple(map(float, p)) for p in np.asarray(poly, np.float64).reshape(-1, 2)]
    for axis, bound, keep_ge in ((0, x1, True), (0, x2, False), (1, y1, True), (1, y2, False)):
        if not pts:
            break
        out = []
        for i, cur in enumerate(pts):
            prev = pts[i - 1]
            cin = cur[axis] >= bound if keep_ge else cur[axis] <= bound
            pin = prev[axis] >= bound if keep_ge else prev[axis] <= bound
            if cin != pin:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                cross = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                cross = (bound, cross[1]) if axis == 0 else (cross[0], bound)
                out.append(cross)
            if cin:
                out.append(cur)
        pts = out
    return _simplify(np.asarray(pts, np.float64).reshape(-1, 2))


def _simplify(p: np.ndarray, eps: float = 1e-9) -> np.ndarray:
    """Drop consecutive duplicate and collinear vertices of a closed polygon."""
    changed = True
    while changed and len(p) >= 3:
        changed = False
        nxt, prv = np.roll(p, -1, 0), np.roll(p, 1, 0)
        cross = ((p[:, 0] - prv[:, 0]) * (nxt[:, 1] - p[:, 1])
                 - (p[:, 1] - prv[:, 1]) * (nxt[:, 0] - p[:, 0]))
        scale = np.abs(p - prv).sum(1) * np.abs(nxt - p).sum(1) + eps
        bad = np.abs(cross) <= eps * scale
        if bad.any():
            p = np.delete(p, int(np.flatnonzero(bad)[0]), axis=0)
            changed = True
    if len(p) < 3:
        return np.zeros((0, 2), np.float64)
    return p


def _signed_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _to_quad(clipped: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Bring a clipped polygon to 4 points (see the module docstring) in the original's order."""
    p = clipped
    if (_signed_area(p) > 0) != (_signed_area(original) > 0):
        p = p[::-1]
    while len(p) > 4:  # the devkit's 5 -> 4 rule, repeated: merge the shortest edge
        n = len(p)
        k = int(np.argmin(np.linalg.norm(np.roll(p, -1, 0) - p, axis=1)))
        j = (k + 1) % n
        p = p.copy()
        p[k] = (p[k] + p[j]) / 2
        p = np.delete(p, j, axis=0)
    if len(p) == 3:
        edges = np.linalg.norm(np.roll(p, -1, 0) - p, axis=1)
        k = int(np.argmax(edges))
        p = np.insert(p, k + 1, (p[k] + p[(k + 1) % 3]) / 2, axis=0)
    orig = np.asarray(original, np.float64)
    best = min(range(4), key=lambda s: float(((np.roll(p, -s, 0) - orig) ** 2).sum()))
    return np.roll(p, -best, 0)


# -- tiling -----------------------------------------------------------------------------------
def _clip_detections(det: Detections, area: np.ndarray, x: int, y: int, size: int,
                     thresh: float, keep_partial: str) -> Detections:
    """The objects of ``det`` (source coordinates) seen in the tile at ``(x, y)``."""
    x2, y2 = x + size, y + size
    if det.polygons is not None:
        b = np.concatenate([det.polygons.min(1), det.polygons.max(1)], 1).astype(np.float64)
    else:
        b = det.xyxy.astype(np.float64)
    iw = np.minimum(b[:, 2], x2) - np.maximum(b[:, 0], x)
    ih = np.minimum(b[:, 3], y2) - np.maximum(b[:, 1], y)
    cand = (iw > 0) & (ih > 0) & (area > 0)
    inside = cand & (b[:, 0] >= x) & (b[:, 1] >= y) & (b[:, 2] <= x2) & (b[:, 3] <= y2)
    frac = np.where(inside, 1.0, 0.0)
    new_boxes = b.copy()
    new_polys = None if det.polygons is None else det.polygons.astype(np.float64)
    for i in np.flatnonzero(cand & ~inside):
        if new_polys is None:
            nb = np.array([max(b[i, 0], x), max(b[i, 1], y), min(b[i, 2], x2), min(b[i, 3], y2)])
            frac[i] = (nb[2] - nb[0]) * (nb[3] - nb[1]) / area[i]
            new_boxes[i] = nb
        else:
            clipped = clip_polygon_to_rect(new_polys[i], x, y, x2, y2)
            if len(clipped) < 3:
                continue
            frac[i] = abs(_signed_area(clipped)) / area[i]
            new_polys[i] = _to_quad(clipped, new_polys[i])
    keep = frac > 0
    partial = keep & (frac < thresh)
    if keep_partial == "drop":
        keep &= ~partial
    idx = np.flatnonzero(keep)
    out = det[idx]
    if new_polys is not None:
        polys = np.clip(new_polys[idx] - (x, y), 0, size).astype(np.float32)
        out.polygons = polys
        out.xyxy = np.concatenate([polys.min(1), polys.max(1)], 1)
    else:
        out.xyxy = np.clip(new_boxes[idx] - (x, y, x, y), 0, size).astype(np.float32)
    out.flags = dict(out.flags)
    out.flags["difficult"] = out.flag("difficult") | partial[idx]
    return out


def _object_area(det: Detections) -> np.ndarray:
    if det.polygons is not None:
        p = det.polygons.astype(np.float64)
        x, y = p[..., 0], p[..., 1]
        return 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))
    return det.area.astype(np.float64)


def tile_sample(
    sample: Sample,
    tile_size: int = 1024,
    gap: int = 200,
    *,
    rate: float = 1.0,
    min_kept_fraction: float = 0.7,
    keep_partial: str = "difficult",
    encode: bool = False,
) -> list[Sample]:
    """The tiles of one sample (see :func:`tile_dataset`)."""
    if keep_partial not in ("difficult", "drop"):
        raise ConfigError(f"keep_partial must be 'difficult' or 'drop', got {keep_partial!r}")
    if rate <= 0:
        raise ConfigError(f"rate must be > 0, got {rate}")
    image = sample.load_image()
    det = sample.detections
    src_h, src_w = image.shape[:2]
    if rate != 1.0:
        size = (max(1, round(src_w * rate)), max(1, round(src_h * rate)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))
        det = det.scale(rate, rate)
    h, w = image.shape[:2]
    area = _object_area(det)
    out = []
    for x, y in tile_origins(w, h, tile_size, gap):
        crop = image[y:y + tile_size, x:x + tile_size]
        if crop.shape[0] < tile_size or crop.shape[1] < tile_size:
            padded = np.zeros((tile_size, tile_size) + crop.shape[2:], image.dtype)
            padded[:crop.shape[0], :crop.shape[1]] = crop
            crop = padded
        tile_det = _clip_detections(det, area, x, y, tile_size, min_kept_fraction, keep_partial)
        meta: dict[str, Any] = dict(sample.meta)
        meta["tile"] = {"x": x, "y": y, "rate": rate, "source": sample.id,
                        "source_width": src_w, "source_height": src_h}
        out.append(Sample(encode_png(crop) if encode else crop, tile_size, tile_size, tile_det,
                          id=f"{sample.id}__{rate:g}__{x}___{y}", meta=meta))
    return out


def tile_dataset(
    ds: Dataset,
    tile_size: int = 1024,
    gap: int = 200,
    *,
    rate: float = 1.0,
    min_kept_fraction: float = 0.7,
    keep_partial: str = "difficult",
    encode: bool = False,
    progress: Callable[[Iterable[Sample]], Iterable[Sample]] | None = None,
) -> Dataset:
    """Cut every image into overlapping ``tile_size`` tiles (DOTA_devkit ImgSplit semantics).

    Args:
        ds: the dataset; boxes may be axis-aligned or oriented (polygons).
        tile_size: side of the square tiles, in pixels of the rescaled image.
        gap: overlap between neighbouring tiles; the stride is ``tile_size - gap``.
        rate: rescale factor applied to each image (bicubic) and its boxes before tiling.
        min_kept_fraction: an object clipped to less than this fraction of its area is
            partial (see ``keep_partial``).
        keep_partial: ``"difficult"`` keeps partial objects flagged difficult, ``"drop"``
            leaves them out.
        encode: store tiles as PNG bytes (bounded memory) instead of arrays; without it,
            unpadded tiles are views into each decoded source image.
        progress: optional wrapper around the sample iteration (e.g. a progress bar).

    Returns:
        A :class:`Dataset` of tiles (``tile_size x tile_size``), in source order then tile
        order, each with ``meta["tile"]`` (see the module docstring) and a ``difficult``
        flag on every box.

    Example:
        >>> import numpy as np
        >>> from danlu.structures import Dataset, Detections, Sample
        >>> s = Sample(np.zeros((100, 150, 3), np.uint8), 150, 100,
        ...            Detections(np.array([[50, 10, 70, 30]]), [0]), id="a")
        >>> tiles = tile_dataset(Dataset([s], ["car"]), tile_size=64, gap=16)
        >>> len(tiles), tiles[0].id, tiles[0].detections.xyxy.tolist()
        (6, 'a__1__0___0', [[50.0, 10.0, 64.0, 30.0]])
        >>> tiles[0].detections.flags["difficult"].tolist()  # 14/20 of it visible: >= 0.7
        [False]
    """
    items: Iterable[Sample] = ds.samples
    tiles: list[Sample] = []
    for s in progress(items) if progress is not None else items:
        tiles.extend(tile_sample(s, tile_size, gap, rate=rate,
                                 min_kept_fraction=min_kept_fraction,
                                 keep_partial=keep_partial, encode=encode))
    meta = dict(ds.meta)
    meta["tiling"] = {"tile_size": tile_size, "gap": gap, "rate": rate,
                      "min_kept_fraction": min_kept_fraction, "keep_partial": keep_partial}
    return Dataset(tiles, ds.class_names, meta)


def untile_detections(det: Detections, tile: dict[str, Any]) -> Detections:
    """Map detections from a tile's pixels back to its source image (``meta["tile"]``).

    Example:
        >>> d = Detections(np.array([[0, 0, 10, 10]]), [0])
        >>> untile_detections(d, {"x": 100, "y": 50, "rate": 0.5}).xyxy.tolist()
        [[200.0, 100.0, 220.0, 120.0]]
    """
    rate = float(tile.get("rate", 1.0))
    out = det.translate(float(tile["x"]), float(tile["y"]))
    return out.scale(1 / rate, 1 / rate) if rate != 1.0 else out


__all__ = ["tile_origins", "tile_sample", "tile_dataset", "untile_detections",
           "clip_polygon_to_rect"]
