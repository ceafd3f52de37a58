"""Windowed reads of a TIFF page by tile or strip, through tifffile's per-segment decoder.

A page's pixels are stored in *segments* (tiles, or strips of ``RowsPerStrip`` full rows),
each compressed on its own. A window needs only the segments it intersects: their bytes are
read at ``page.dataoffsets[i]`` (``page.databytecounts[i]`` long) and decoded by
``TiffPage.decode``; the decoded segment, converted to RGB, goes into an LRU cache bounded in
bytes, so overlapping windows read in row-major order decode each segment once (as long as
one row of windows' segments fits in the bound).

A *cell* is one position of the segment grid: one segment for chunky data (``PlanarConfig``
1), one segment per needed sample plane for planar data (``PlanarConfig`` 2). Uncompressed
strips need no decoder: their rows lie at known offsets, so a cell is then a block of rows
(at most ``_RAW_CELL_BYTES`` per plane, never more than a strip's rows) read straight from the
file, and an uncompressed image stored as one single strip is still read by window.

Example:
    >>> import tempfile, numpy as np, tifffile
    >>> from danlu.infer.raster import to_rgb8
    >>> image = np.arange(40 * 50 * 3, dtype=np.uint8).reshape(40, 50, 3)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     tifffile.imwrite(f"{tmp}/a.tif", image, tile=(16, 16), compression="zlib")
    ...     w = TiffWindows(f"{tmp}/a.tif", to_rgb=to_rgb8)
    ...     same = np.array_equal(w.read(10, 5, 30, 20), image[5:20, 10:30])
    ...     w.close()
    >>> same, w.decodes  # the window meets 2 x 2 of the 3 x 4 tiles
    (True, 4)
"""

from __future__ import annotations

import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import DatasetError
from danlu.infer.geo import GeoTransform, geo_from_tiff

_JPEG = {6, 7, 33007, 34892}
_RAW_CELL_BYTES = 1 << 20  # rows per cell of an uncompressed strip: about this many bytes
_MINISWHITE, _MINISBLACK, _RGB, _PALETTE, _YCBCR = 0, 1, 2, 3, 6


class ByteLRU:
    """A least-recently-used map of arrays bounded by their total ``nbytes`` (not thread-safe:
    the caller locks). An item larger than the bound is not kept."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()

    def get(self, key: Any) -> np.ndarray | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Any, value: np.ndarray) -> None:
        if key in self._items or value.nbytes > self.max_bytes:
            return
        self._items[key] = value
        self.nbytes += value.nbytes
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.nbytes

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


def _codec_missing(page: Any) -> str | None:
    """Why tifffile cannot decode this page's segments here (a codec it lacks), or None."""
    from tifffile import TIFF

    try:
        if page.compression != 1:
            TIFF.DECOMPRESSORS[page.compression]
        if page.predictor != 1:
            TIFF.UNPREDICTORS[page.predictor]
    except KeyError as e:
        return str(e.args[0]) if e.args else "a codec is missing"
    return None


def _unsupported(page: Any) -> str | None:
    """Why this page cannot be read by window, or None when it can."""
    spp, photometric = int(page.samplesperpixel), int(page.photometric)
    if page.imagedepth > 1:
        return "a volumetric page (ImageDepth > 1) is not read by window"
    if page.dtype not in (np.uint8, np.uint16) or page.bitspersample not in (8, 16):
        return f"{page.bitspersample}-bit {page.dtype} samples are not read by window"
    if page.is_subsampled and page.compression not in _JPEG:
        return "chroma-subsampled YCbCr is not read by window"
    bands = {_MINISWHITE: (1, 2), _MINISBLACK: (1, 2), _RGB: (3, 4), _PALETTE: (1,)}
    if photometric == _YCBCR and page.compression in _JPEG:
        bands[_YCBCR] = (3,)
    if spp not in bands.get(photometric, ()):
        return (f"photometric {page.photometric.name} with {spp} samples per pixel is not read "
                "by window (expected gray, gray+alpha, RGB, RGBA or palette)")
    if photometric == _PALETTE and page.colormap is None:
        return "a palette image without a ColorMap"
    return _codec_missing(page)


class TiffWindows:
    """Windowed reader of page 0 of a TIFF file.

    Args:
        path: the TIFF file.
        to_rgb: converts decoded samples (``H x W x C``, C 1-4) to ``H x W x 3`` uint8.
        cache_bytes: bound of the LRU cache of decoded cells.

    After construction, ``unsupported`` is None, or the reason this page cannot be read by
    window (the caller then decodes it whole elsewhere); ``geo`` is read either way.

    Raises:
        DatasetError: not a readable TIFF, or its segments run past the end of the file.
    """

    def __init__(self, path: str | Path, *, to_rgb: Callable[[np.ndarray], np.ndarray],
                 cache_bytes: int = 256 << 20) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            page = self._tif.pages[0]
        except Exception as e:  # tifffile raises many kinds on a bad header
            if getattr(self, "_tif", None) is not None:
                self._tif.close()
            raise DatasetError(f"{self.path}: not a readable TIFF ({e})") from e
        self._page = page
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.decodes = 0
        self.windowed = False
        try:
            self.geo: GeoTransform | None = geo_from_tiff(page)
            self.unsupported = _unsupported(page)
            if self.unsupported is None:
                self._check_extent()
                self._layout()
        except BaseException:
            self._tif.close()
            raise
        self._to_rgb = to_rgb
        self._cache = ByteLRU(cache_bytes)
        self._pending: dict[tuple[int, int], Future[np.ndarray]] = {}
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._fh = self._tif.filehandle

    def _layout(self) -> None:
        """The grid of cells: their size, count, the planes they read."""
        page = self._page
        spp = int(page.samplesperpixel)
        planar = page.planarconfig == 2 and spp > 1
        self._planes = list(range(3 if spp >= 3 else 1)) if planar else [0]
        self._samples = 1 if planar else spp
        self._raw = (not page.is_tiled and page.compression == 1 and page.predictor == 1
                     and page.fillorder == 1)
        if page.is_tiled:
            self._seg_h, self._seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_h, self._seg_w = min(int(page.rowsperstrip), self.height), self.width
        self._strip_rows = self._seg_h
        self._row_bytes = self.width * self._samples * page.dtype.itemsize
        if self._raw:
            self._seg_h = min(self._seg_h, max(1, _RAW_CELL_BYTES // self._row_bytes))
            self._file_dtype = np.dtype(page.dtype).newbyteorder(self._tif.byteorder)
        self._rows = math.ceil(self.height / self._seg_h)
        self._cols = math.ceil(self.width / self._seg_w)
        self.windowed = self._rows * self._cols > 1
        self._kind = "tile" if page.is_tiled else "strip"
        self._decode_args: dict[str, Any] = {}
        if page.compression in _JPEG:
            self._decode_args = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
        page.decode  # noqa: B018  (build tifffile's decoder once, in this thread)

    def _check_extent(self) -> None:
        page = self._page
        size = os.path.getsize(self.path)
        ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
        if len(page.dataoffsets) < _product(page.chunked) or (ends and max(ends) > size):
            raise DatasetError(f"{self.path}: image data runs past the end of the file "
                               f"({size} bytes); truncated?")

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` (already checked) as ``H x W x 3`` uint8."""
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        sh, sw = self._seg_h, self._seg_w
        for iy in range(y0 // sh, (y1 - 1) // sh + 1):
            for ix in range(x0 // sw, (x1 - 1) // sw + 1):
                cell = self._cell(iy, ix)
                top, left = iy * sh, ix * sw
                ya, yb = max(y0, top), min(y1, top + cell.shape[0])
                xa, xb = max(x0, left), min(x1, left + cell.shape[1])
                out[ya - y0:yb - y0, xa - x0:xb - x0] = cell[ya - top:yb - top,
                                                             xa - left:xb - left]
        return out

    def _cell(self, iy: int, ix: int) -> np.ndarray:
        """The RGB pixels of grid cell ``(iy, ix)``, from the cache or decoded (once, even when
        several threads ask for it at the same time)."""
        key = (iy, ix)
        with self._lock:
            if self._tif is None:
                raise DatasetError(f"{self.path}: read after close()")
            hit = self._cache.get(key)
            if hit is not None:
                return hit
            fut = self._pending.get(key)
            mine = fut is None
            if mine:
                fut = self._pending[key] = Future()
        assert fut is not None
        if not mine:
            return fut.result()
        try:
            cell = self._decode_cell(iy, ix)
        except BaseException as e:
            fut.set_exception(e)
            raise
        finally:
            with self._lock:
                self._pending.pop(key, None)
        with self._lock:
            self._cache.put(key, cell)
        fut.set_result(cell)
        return cell

    def _decode_cell(self, iy: int, ix: int) -> np.ndarray:
        h = min(self._seg_h, self.height - iy * self._seg_h)
        w = min(self._seg_w, self.width - ix * self._seg_w)
        if self._raw:
            r0 = iy * self._seg_h
            planes = [self._raw_rows(p, r0, r0 + h) for p in self._planes]
        else:
            per_plane = self._rows * self._cols
            planes = [self._segment(p * per_plane + iy * self._cols + ix, h, w)
                      for p in self._planes]
        samples = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=2)
        rgb = self._to_rgb(self._photometric(samples))
        return rgb.copy() if rgb.base is not None else rgb  # own the bytes the cache counts

    def _segment(self, index: int, h: int, w: int) -> np.ndarray:
        """Decoded samples ``h x w x C`` (native dtype) of segment ``index``."""
        offset, count = self._page.dataoffsets[index], self._page.databytecounts[index]
        data = None
        if count and offset:
            with self._file_lock:
                self._fh.seek(offset)
                data = self._fh.read(count)
            if len(data) < count:
                raise DatasetError(f"{self.path}: {self._kind} {index} is cut short; truncated?")
        try:
            arr, _, _ = self._page.decode(data, index, **self._decode_args)
        except Exception as e:  # codecs raise their own kinds on corrupt data
            raise DatasetError(f"{self.path}: cannot decode {self._kind} {index} ({e}); "
                               "corrupt file?") from e
        self.decodes += 1
        if arr is None:  # an empty segment (byte count 0): nodata
            return np.zeros((h, w, self._samples), self._page.dtype)
        arr = arr.reshape(arr.shape[-3:])
        if arr.shape[0] < h or arr.shape[1] < w:
            raise DatasetError(f"{self.path}: {self._kind} {index} decodes to {arr.shape[:2]}, "
                               f"expected at least {(h, w)}; corrupt file?")
        return arr[:h, :w]

    def _raw_rows(self, plane: int, r0: int, r1: int) -> np.ndarray:
        """Rows ``r0:r1`` of sample plane ``plane`` of uncompressed strips, read directly."""
        page, rps, row_bytes = self._page, self._strip_rows, self._row_bytes
        strips = math.ceil(self.height / rps)
        parts, r = [], r0
        while r < r1:
            s = r // rps
            end = min(r1, (s + 1) * rps)
            index = plane * strips + s
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            n = (end - r) * row_bytes
            if not (count and offset):  # an empty strip: nodata
                parts.append(bytes(n))
            elif (end - s * rps) * row_bytes > count:
                raise DatasetError(f"{self.path}: strip {index} holds {count} bytes, too few for "
                                   f"its rows; corrupt file?")
            else:
                with self._file_lock:
                    self._fh.seek(offset + (r - s * rps) * row_bytes)
                    parts.append(self._fh.read(n))
                if len(parts[-1]) < n:
                    raise DatasetError(f"{self.path}: strip {index} is cut short; truncated?")
            r = end
        self.decodes += 1
        rows = np.frombuffer(b"".join(parts), self._file_dtype)
        return rows.reshape(r1 - r0, self.width, self._samples).astype(page.dtype)

    def _photometric(self, samples: np.ndarray) -> np.ndarray:
        """Gray, gray+alpha, RGB or RGBA samples from the page's photometric interpretation."""
        photometric = int(self._page.photometric)
        if photometric == _PALETTE:
            table = np.asarray(self._page.colormap, np.uint16).T  # [entries, 3]
            return table[np.minimum(samples[:, :, 0], len(table) - 1)]
        if photometric == _MINISWHITE:
            return np.iinfo(samples.dtype).max - samples[:, :, :1]
        return samples

    def close(self) -> None:
        """Close the file; later reads raise."""
        tif, self._tif = getattr(self, "_tif", None), None
        if tif is not None:
            tif.close()
        if hasattr(self, "_cache"):
            self._cache.clear()


def _product(values: Any) -> int:
    """The product of integers (1 for none)."""
    return math.prod(int(v) for v in values)
