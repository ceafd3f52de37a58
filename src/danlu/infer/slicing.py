"""Sliced inference: detect small objects in images far larger than the model's input.

:func:`sliced_predict` cuts an image (an array, a file, or any
:class:`~danlu.infer.raster.Raster`, read window by window so a huge TIFF is never decoded
whole) into overlapping square tiles, batches them through the Predictor's model, maps every
tile's detections back to the image and merges them into one :class:`Detections`.

The conventions:

* **Tiles** (:func:`slice_windows`): ``size x size`` windows, row-major (every ``x`` of a row,
  then the next row: the order a band reader decodes once), stepping by
  ``stride = size - round(overlap * size)``; the last tile of a row or column is shifted back
  to end at the image border, so no tile hangs over the edge. A side shorter than ``size``
  gets one tile of that side.
* **Per tile**: the Predictor's own post-processing, as for a whole image (``predict``), in
  the model's square, then back to tile pixels and shifted to image pixels.
* **Cut boxes**: a box within ``edge_margin`` pixels of a tile side that is not the image's
  border may be an object the tile cut. A cut box contained (intersection over its own area
  ``>= contain_threshold``) in an uncut box of the same class from another tile is the same
  object seen whole elsewhere, and is dropped; cut boxes left over (an object larger than the
  overlap, cut in every tile) are merged with each other, per class, SAHI's way (union box, best
  score) when their IoS is ``>= contain_threshold``. One object gives one box.
* **Merge**: the resulting boxes of all tiles (and of the full-image pass, with
  ``full_pass``) go through ``merge`` (default: the Predictor's own suppression and IoU, and
  its one label per box, with no detection cap), which removes the copies of an object that
  lies whole in two tiles.
  Oriented boxes (``polygons``) are suppressed by polygon NMS.
* **Pipeline**: on an accelerator, tiles are read and letterboxed by a reader thread ahead of
  the model (at most ``2 x batch_size`` tiles in flight), so the device does not wait on the
  decoder; on the CPU they are read between batches (:func:`reader_threads`).

The DOTA preset (:func:`dota_merge`, after the DOTA devkit's ``ResultMerge.py``): map back, no
cut-box step, per-class NMS at IoU 0.3 (polygon NMS for oriented boxes; the devkit's
multi-process ``ResultMerge_multi_process.py`` uses 0.1: pass it as ``iou``).

Example:
    >>> slice_windows(1000, 500, size=512, overlap=0.2)
    [(0, 0, 512, 500), (410, 0, 922, 500), (488, 0, 1000, 500)]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from danlu.errors import ConfigError
from danlu.infer.postprocess import PostProcess
from danlu.infer.slice_size import parse_slice_size  # re-exported: callers import it here
from danlu.structures import Detections

Window = tuple[int, int, int, int]

#: DOTA_devkit ResultMerge.py's NMS threshold (axis-aligned and polygon NMS alike)
DOTA_IOU = 0.3


@dataclass
class SliceStats:
    """What one :func:`sliced_predict` call did: counts and where the seconds went
    (``read``: decoding + letterboxing, overlapped with ``model`` by the reader threads)."""

    width: int = 0
    height: int = 0
    tiles: int = 0
    tile_boxes: int = 0
    dropped_cut: int = 0
    merged_cut: int = 0
    boxes: int = 0
    seconds_read: float = 0.0
    seconds_model: float = 0.0
    seconds_merge: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tiles_per_second(self) -> float:
        return self.tiles / self.seconds if self.seconds > 0 else 0.0


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    starts.append(length - size)
    return starts


def slice_windows(width: int, height: int, size: int, overlap: float = 0.2) -> list[Window]:
    """The tiles ``(x0, y0, x1, y1)`` of a ``width x height`` image (see the module
    docstring: row-major, ``stride = size - round(overlap * size)``, last tiles shifted back
    to the border)."""
    size = int(size)
    if size <= 0:
        raise ConfigError(f"slice size must be positive, got {size}")
    if not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap must be in [0, 1), got {overlap}")
    stride = max(1, size - int(round(size * overlap)))
    xs, ys = _starts(width, size, stride), _starts(height, size, stride)
    return [(x, y, min(x + size, width), min(y + size, height)) for y in ys for x in xs]


def auto_slice_size(model_size: int | None, width: int, height: int) -> int:
    """``--slice auto``: tiles of the model's own input side, so the model sees objects at the
    scale it was trained on; an image at most 1.5x that side is one tile (no slicing). A model
    without an input size (a classical detector) gets 1024."""
    side = int(model_size or 1024)
    return max(width, height) if max(width, height) <= 1.5 * side else side


def cut_sides(det: Detections, window: Window, width: int, height: int,
              margin: float) -> np.ndarray:
    """bool ``[N]``: the boxes (in image pixels) within ``margin`` of a side of ``window``
    that is not the image's border."""
    if not len(det):
        return np.zeros(0, bool)
    x0, y0, x1, y1 = window
    b = det.xyxy
    cut = np.zeros(len(det), bool)
    if x0 > 0:
        cut |= b[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= b[:, 1] <= y0 + margin
    if x1 < width:
        cut |= b[:, 2] >= x1 - margin
    if y1 < height:
        cut |= b[:, 3] >= y1 - margin
    return cut


def resolve_cut_boxes(det: Detections, cut: np.ndarray, threshold: float = 0.6
                      ) -> tuple[Detections, int, int]:
    """Boxes of all tiles -> one box per object at the tile seams (module docstring).

    Returns ``(detections, dropped, merged)``: the uncut boxes, the cut boxes no uncut box
    contains, merged with each other; how many cut boxes were dropped as seen whole elsewhere,
    and how many were folded into another cut box."""
    from danlu import boxes

    if not cut.any():
        return det, 0, 0
    # containment: uncut boxes rank first, so a cut box joins the cluster of an uncut box
    # of its class that contains it; only the uncut boxes near a cut one take part
    near = cut | _touching(det.xyxy, cut)
    index = np.flatnonzero(near)
    sub_cut = cut[index]
    priority = det.scores[index] + np.where(sub_cut, 0.0, 2.0).astype(np.float32)
    clusters = boxes.greedy_nmm(det.xyxy[index], priority, det.labels[index],
                                match_metric="IOS", match_threshold=threshold - 1e-9)
    drop = np.zeros(len(det), bool)
    for keeper, members in clusters.items():
        if not sub_cut[keeper]:
            for m in members:
                if sub_cut[m]:
                    drop[index[m]] = True
    pieces = np.flatnonzero(cut & ~drop)
    merged = 0
    parts = [det[~cut]]
    if len(pieces):
        p = det[pieces]
        groups = boxes.greedy_nmm(p.xyxy, p.scores, p.labels, match_metric="IOS",
                                  match_threshold=threshold - 1e-9)
        xyxy, scores, labels = boxes.merge_predictions(
            p.xyxy, p.scores, p.labels, groups, match_metric="IOS",
            match_threshold=threshold - 1e-9)
        merged = len(p) - len(groups)
        parts.append(Detections(np.asarray(xyxy, np.float32), labels,
                                scores=np.asarray(scores, np.float32)))
    keep = [d for d in parts if len(d)]
    out = Detections.concat([_plain(d) for d in keep]) if keep else det[:0]
    return out, int(drop.sum()), merged


def _touching(xyxy: np.ndarray, mask: np.ndarray, cell: float = 128.0) -> np.ndarray:
    """bool ``[N]``: the boxes that share a ``cell``-pixel grid cell with a box of ``mask``
    (a superset of the boxes that intersect one)."""
    lo = np.floor(xyxy[:, :2] / cell).astype(np.int64)
    hi = np.floor(xyxy[:, 2:] / cell).astype(np.int64)
    span = int((hi - lo).max(initial=0)) + 1
    if span > 8:  # huge boxes: every box takes part
        return np.ones(len(xyxy), bool)
    width = int(hi[:, 0].max(initial=0)) + 2
    marked: set[int] = set()
    for i in np.flatnonzero(mask):
        for gy in range(lo[i, 1], hi[i, 1] + 1):
            row = gy * width
            marked.update(range(row + lo[i, 0], row + hi[i, 0] + 1))
    keys = np.fromiter(marked, np.int64, len(marked))
    out = np.zeros(len(xyxy), bool)
    for dy in range(span):
        for dx in range(span):
            gx, gy = lo[:, 0] + dx, lo[:, 1] + dy
            inside = (gx <= hi[:, 0]) & (gy <= hi[:, 1])
            out |= inside & np.isin(gy * width + gx, keys)
    return out


def _plain(det: Detections) -> Detections:
    return Detections(det.xyxy, det.labels, scores=det.scores, polygons=det.polygons)


def _open(image: Any) -> tuple[Any, bool]:
    """``(raster, opened_here)``."""
    if hasattr(image, "read") and hasattr(image, "width") and hasattr(image, "height"):
        return image, False
    from danlu.infer.raster import open_raster

    return open_raster(Path(image) if isinstance(image, str) else image), True


def _tiles(raster: Any, windows: list[Window], prepare: Callable[[np.ndarray], Any],
           workers: int, ahead: int, stats: SliceStats) -> Iterator[tuple[Window, Any]]:
    """``(window, prepared tile)`` in window order, read by ``workers`` threads at most
    ``ahead`` tiles in front of the consumer."""

    def load(w: Window) -> Any:
        t0 = time.perf_counter()
        out = prepare(raster.read(*w))
        stats.seconds_read += time.perf_counter() - t0
        return out

    if workers <= 0:
        for w in windows:
            yield w, load(w)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="danlu-tiles") as pool:
        pending: list[tuple[Window, Future[Any]]] = []
        it = iter(windows)
        for w in it:
            pending.append((w, pool.submit(load, w)))
            if len(pending) >= ahead:
                break
        while pending:
            w, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(load, nxt)))
            yield w, fut.result()


def reader_threads(predictor: Any) -> int:
    """Reader threads worth running beside the model: none when it runs on the CPU (torch
    already keeps every core busy, and a reader thread beside its OpenMP workers was measured
    to halve the tiles per second on 2 cores, while reading took 3 % of the time), one on an
    accelerator (decoding then overlaps the device's work)."""
    device = getattr(predictor, "device", None)
    return 0 if device is None or getattr(device, "type", "cpu") == "cpu" else 1


def _batches(items: Iterable[Any], n: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _overview(raster: Any, side: int, band: int = 1024) -> tuple[np.ndarray, float]:
    """The whole image shrunk so its long side is ``side`` (read in row bands: the full
    image is never held), and the factor it was shrunk by."""
    from PIL import Image

    w, h = raster.width, raster.height
    scale = min(1.0, side / max(w, h))
    out_w, out_h = max(1, round(w * scale)), max(1, round(h * scale))
    rows = []
    done = 0
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        target = round(y1 * scale) - done
        if target <= 0:
            continue
        part = Image.fromarray(raster.read(0, y0, w, y1)).resize((out_w, target),
                                                                  Image.BILINEAR)
        rows.append(np.asarray(part))
        done += target
    image = np.concatenate(rows, axis=0)[:out_h]
    return np.ascontiguousarray(image), out_w / w


def sliced_predict(predictor: Any, image: Any, *, slice_size: int | str = "auto",
                   overlap: float = 0.2, full_pass: bool = False,
                   batch_size: int | None = None, merge: PostProcess | None = None,
                   score_threshold: float | None = None, edge_margin: float = 2.0,
                   contain_threshold: float = 0.6, resolve_cuts: bool = True,
                   workers: int | None = None, stats: SliceStats | None = None,
                   progress: Callable[[int], None] | None = None) -> Detections:
    """Detect objects in a large image tile by tile (see the module docstring).

    Args:
        predictor: a :class:`~danlu.infer.predictor.Predictor`.
        image: an ``HxWx3`` array, an image path (TIFF / PNG read by window), or a Raster.
        slice_size: the tile side in image pixels, or ``"auto"`` (:func:`auto_slice_size`).
        overlap: the fraction of a tile shared with its neighbour.
        full_pass: also predict the whole image shrunk to the model's input (large objects).
        batch_size: tiles per forward pass (default: the Predictor's).
        merge: the suppression across tiles (default: the Predictor's method and IoU, no cap).
        score_threshold: candidates' minimum score (default: the Predictor's).
        edge_margin: pixels from a tile's inner side within which a box counts as cut
            (:func:`cut_sides`).
        contain_threshold: the cut-box rule's containment threshold
            (:func:`resolve_cut_boxes`).
        resolve_cuts: apply the cut-box rule (False: plain map-back-and-merge, as the DOTA
            devkit does).
        workers: reader threads (0: read in the calling thread; default
            :func:`reader_threads`).
        stats: a :class:`SliceStats` to fill in.
        progress: called with the number of tiles just finished.

    Returns:
        :class:`Detections` in the image's pixels, best first.
    """
    t_start = time.perf_counter()
    stats = stats if stats is not None else SliceStats()
    raster, opened = _open(image)
    try:
        w, h = int(raster.width), int(raster.height)
        transform = predictor.transform
        size = (auto_slice_size(None if transform is None else transform.size, w, h)
                if slice_size == "auto" else int(slice_size))
        windows = slice_windows(w, h, size, overlap)
        stats.width, stats.height, stats.tiles = w, h, len(windows)
        bs = int(batch_size or predictor.batch_size)
        workers = reader_threads(predictor) if workers is None else int(workers)
        as_arrays = transform is None or bool(predictor.tta)  # whole-image paths per tile
        prepare = (lambda a: (a, None)) if as_arrays else transform.image
        found: list[Detections] = []
        cuts: list[np.ndarray] = []
        for chunk in _batches(_tiles(raster, windows, prepare, workers, 2 * bs, stats), bs):
            t0 = time.perf_counter()
            dets = _tile_detections(predictor, chunk, score_threshold)
            for (win, _), det in zip(chunk, dets, strict=True):
                det = det.translate(float(win[0]), float(win[1]))
                found.append(det)
                cuts.append(cut_sides(det, win, w, h, edge_margin) if resolve_cuts
                            else np.zeros(len(det), bool))
            stats.seconds_model += time.perf_counter() - t0
            if progress is not None:
                progress(len(chunk))
        if full_pass and len(windows) > 1:
            t0 = time.perf_counter()
            side = transform.size if transform is not None else 1024
            small, scale = _overview(raster, side)
            det = predictor.predict(small, score_threshold=score_threshold)
            found.append(det.scale(1.0 / scale, 1.0 / scale))
            cuts.append(np.zeros(len(det), bool))
            stats.seconds_model += time.perf_counter() - t0
    finally:
        if opened:
            raster.close()
    t0 = time.perf_counter()
    out = merge_tiles(found, cuts, merge or default_merge(predictor), contain_threshold, stats)
    stats.seconds_merge = time.perf_counter() - t0
    stats.boxes = len(out)
    stats.seconds = time.perf_counter() - t_start
    return out


def _tile_detections(predictor: Any, chunk: list[tuple[Window, Any]],
                     score_threshold: float | None) -> list[Detections]:
    """Each tile's final detections (the Predictor's post-processing) in tile pixels."""
    transform = predictor.transform
    if transform is None or predictor.tta:  # tiles as arrays: the Predictor's own path
        arrays = [a for _, (a, _) in chunk]
        return list(predictor.predict_arrays(arrays, score_threshold, batch_size=len(arrays)))
    batch = torch.stack([t for _, (t, _) in chunk])
    cands = predictor.candidates(batch, score_threshold)
    return [transform.back(predictor.finish(c), frame, drop_outside=True)
            for c, (_, (_, frame)) in zip(cands, chunk, strict=True)]


def default_merge(predictor: Any) -> PostProcess:
    """The Predictor's own suppression across tiles (and its one label per box: two tiles
    may see one object as different classes), with no detection cap."""
    pp = predictor.postprocess
    return PostProcess(pp.method, iou_threshold=pp.iou_threshold, max_detections=0,
                       score_threshold=pp.score_threshold, sigma=pp.sigma, match=pp.match,
                       multi_label=pp.multi_label)


def dota_merge(iou: float = DOTA_IOU) -> PostProcess:
    """The DOTA devkit's ResultMerge: per-class NMS (polygon NMS for oriented boxes) at
    ``iou``, no detection cap; use with ``resolve_cuts=False``."""
    return PostProcess("hard", iou_threshold=iou, max_detections=0)


def merge_tiles(found: list[Detections], cuts: list[np.ndarray], merge: PostProcess,
                contain_threshold: float = 0.6, stats: SliceStats | None = None
                ) -> Detections:
    """The detections of every tile (image pixels) and their cut flags -> one set: the
    cut-box rule, then ``merge``."""
    nonempty = [(d, c) for d, c in zip(found, cuts, strict=True) if len(d)]
    if not nonempty:
        return Detections.empty(with_scores=True)
    det = Detections.concat([_plain(d) for d, _ in nonempty])
    cut = np.concatenate([c for _, c in nonempty])
    if stats is not None:
        stats.tile_boxes = len(det)
    if det.polygons is None:
        det, dropped, merged = resolve_cut_boxes(det, cut, contain_threshold)
        if stats is not None:
            stats.dropped_cut, stats.merged_cut = dropped, merged
    return merge(det)


__all__ = ["sliced_predict", "reader_threads", "slice_windows", "auto_slice_size",
           "parse_slice_size", "cut_sides",
           "resolve_cut_boxes", "merge_tiles", "default_merge", "dota_merge", "SliceStats",
           "DOTA_IOU"]
