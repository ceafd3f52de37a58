"""Readers of huge images by window: :func:`open_raster` and the :class:`Raster` protocol.

Sliced inference on images of 10,000-30,000 px a side reads one window at a time; a reader
decodes only what the window needs where the format allows it, so memory stays bounded.

Conventions:

* ``read(x0, y0, x1, y1)`` returns exactly rows ``y0:y1`` and columns ``x0:x1`` (half-open,
  pixels, ``0 <= x0 < x1 <= width``, ``0 <= y0 < y1 <= height``; anything else raises
  :class:`~danlu.errors.DatasetError`) as an ``H x W x 3`` uint8 RGB C-contiguous array that
  the caller owns.
* Samples become 8-bit RGB: uint16 ``v -> round(v / 257)``, float ``v -> round(255 * v)``
  (clipped to [0, 1]); gray is repeated to 3 channels, alpha is dropped, a palette is applied.
* A reader is a context manager; ``close()`` releases its file. Reads may come from several
  threads (sliced inference reads tiles ahead of the model): every reader is thread-safe. A
  TIFF segment wanted by two threads at once is decoded once; a PNG reader decodes under a
  lock and serves windows slightly out of order from its ring of recent rows.

Which layouts are read by window (``raster.windowed``):

* ``ArrayRaster``, windowed: a numpy array ``HxW`` or ``HxWxC`` (C 1-4), uint8, uint16, float.
* ``TiffRaster``, windowed by tile or strip: page 0 of a TIFF / GeoTIFF, tiled or striped,
  chunky or planar, uint8 or uint16, gray, gray+alpha, RGB, RGBA or palette, with any
  compression tifffile decodes per segment (none, deflate, packbits, LZMA; LZW, JPEG and
  others with ``imagecodecs`` installed). Uncompressed strips are read by blocks of rows, even
  a page stored as one single strip; a compressed single strip is one segment, read whole
  (``windowed`` False). The TIFF ``Orientation`` tag is not applied (rows as stored, as GDAL
  does).
* ``WholeImageRaster``, not windowed: any other TIFF that PIL reads (LZW or JPEG without
  ``imagecodecs``, CMYK, subsampled YCbCr, float samples), keeping its GeoTIFF transform. A
  TIFF neither reads (more than 4 bands, volumetric) raises ``DatasetError``.
* ``PngRaster``, windowed in row bands: a non-interlaced PNG, gray (1-16 bit), RGB, palette,
  gray+alpha, RGBA, 8 or 16 bit. Windows read with increasing ``y0`` (row-major order)
  decompress the file once; a window above the rows kept restarts from the first row, so a
  column-major order costs one pass over the file per column of windows.
* ``WholeImageRaster``, not windowed: interlaced (Adam7) PNG, JPEG, BMP, WebP, GIF, anything
  else PIL reads, decoded once with the EXIF orientation applied.

**Memory rule.** The peak memory of a windowed read is about the window's bytes plus the
reader's cache bound (``cache_bytes``, default 256 MiB: decoded TIFF segments in an LRU
bounded in bytes; for a PNG, the ring of recently decoded full-width rows, never less than the
window's rows) plus one segment being decoded (a TIFF tile or strip, or a batch of at most
512 KiB of PNG rows). ``WholeImageRaster`` holds the whole decoded image: 30,000 x 30,000 RGB
is 2.7 GB. **JPEG is always decoded whole**: its entropy-coded data has no random access
without restart markers, so a huge JPEG costs its full decoded size. Convert such images to a
tiled TIFF first (e.g. ``gdal_translate -co TILED=YES -co COMPRESS=DEFLATE``). PIL's
decompression-bomb guard (``MAX_IMAGE_PIXELS``) is lifted only while a reader decodes (it is
PIL's global setting: other threads opening images at that moment see it lifted too).

Example:
    >>> import numpy as np
    >>> image = np.arange(4 * 6, dtype=np.uint8).reshape(4, 6)
    >>> with open_raster(image) as r:
    ...     (r.width, r.height, r.windowed), r.read(1, 2, 4, 3)[..., 0].tolist()
    ((6, 4, True), [[13, 14, 15]])
"""

from __future__ import annotations

import contextlib
import operator
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from danlu.errors import DatasetError
from danlu.infer.geo import GeoTransform

DEFAULT_CACHE_BYTES = 256 << 20
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@runtime_checkable
class Raster(Protocol):
    """An image read by window (see the module docstring for the conventions)."""

    width: int
    height: int
    path: Path | None
    geo: GeoTransform | None
    windowed: bool

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` as ``H x W x 3`` uint8 RGB, C-contiguous."""
        ...

    def close(self) -> None:
        """Release the file (a no-op for in-memory rasters)."""
        ...

    def __enter__(self) -> Raster: ...

    def __exit__(self, *exc: object) -> None: ...


def to_rgb8(samples: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 RGB (C-contiguous) from ``H x W`` or ``H x W x C`` samples.

    ``C`` is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA); alpha is dropped. uint8 is kept,
    uint16 becomes ``round(v / 257)``, float ``round(255 * clip(v, 0, 1))`` (NaN as 0).
    The result may share memory with ``samples`` when nothing needs converting.
    """
    a = samples if samples.ndim == 3 else samples[:, :, None]
    a = a[:, :, :3] if a.shape[2] >= 3 else a[:, :, :1]
    if a.dtype == np.uint16:
        a = ((a.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif a.dtype.kind == "f":
        a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise DatasetError(f"image samples of dtype {a.dtype}: expected uint8, uint16 or float")
    if a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    return np.ascontiguousarray(a)


class _BaseRaster:
    """The shared surface: window checks, context manager, ``repr``."""

    width: int
    height: int
    path: Path | None = None
    geo: GeoTransform | None = None
    windowed: bool = False

    def _window(self, x0: int, y0: int, x1: int, y1: int) -> tuple[int, int, int, int]:
        try:
            x0, y0, x1, y1 = (operator.index(v) for v in (x0, y0, x1, y1))
        except TypeError as e:
            raise DatasetError(f"{self._name()}: window ({x0}, {y0}, {x1}, {y1}) must be "
                               "integers") from e
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise DatasetError(
                f"{self._name()}: window ({x0}, {y0}, {x1}, {y1}) is outside the image or empty",
                hint=f"expected 0 <= x0 < x1 <= {self.width} and 0 <= y0 < y1 <= {self.height}")
        return x0, y0, x1, y1

    def _name(self) -> str:
        return str(self.path) if self.path is not None else "array"

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` as ``H x W x 3`` uint8 RGB, C-contiguous."""
        return self._read(*self._window(x0, y0, x1, y1))

    def _read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the file (a no-op for in-memory rasters)."""

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self._name()!r}, width={self.width}, "
                f"height={self.height}, windowed={self.windowed})")


class ArrayRaster(_BaseRaster):
    """A raster over an in-memory array: ``H x W`` or ``H x W x C`` (``C`` 1-4), uint8, uint16
    or float in [0, 1]. Windows are converted on read; the array is not copied."""

    windowed = True

    def __init__(self, array: np.ndarray) -> None:
        a = np.asarray(array)
        if a.ndim not in (2, 3) or (a.ndim == 3 and not 1 <= a.shape[2] <= 4) or 0 in a.shape:
            raise DatasetError(f"array of shape {a.shape}: expected HxW, HxWx3 or HxWx4")
        if a.dtype not in (np.uint8, np.uint16) and a.dtype.kind != "f":
            raise DatasetError(f"array of dtype {a.dtype}: expected uint8, uint16 or float")
        self._array = a
        self.height, self.width = int(a.shape[0]), int(a.shape[1])

    def _read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        out = to_rgb8(self._array[y0:y1, x0:x1])
        return out if out.base is None else out.copy()


class _BombGuard:
    """Lifts PIL's ``MAX_IMAGE_PIXELS`` while at least one reader decodes, restores it after
    the last (so readers decoding in several threads at once restore the user's value)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: int | None = None

    @contextlib.contextmanager
    def lifted(self) -> Iterator[None]:
        from PIL import Image

        with self._lock:
            if self._depth == 0:
                self._saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    Image.MAX_IMAGE_PIXELS = self._saved


_BOMB_GUARD = _BombGuard()


def _pil_rgb8(img: Any) -> np.ndarray:
    """A PIL image as ``H x W x 3`` uint8 (16-bit and float modes scaled, not clipped)."""
    if img.mode.startswith("I;16") or img.mode == "I":
        return to_rgb8(np.clip(np.asarray(img), 0, 65535).astype(np.uint16))
    if img.mode == "F":
        return to_rgb8(np.asarray(img, np.float32))
    return np.ascontiguousarray(np.asarray(img.convert("RGB")))


def decode_whole(path: Path) -> np.ndarray:
    """The whole image at ``path`` decoded by PIL, EXIF orientation applied, as RGB uint8."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _BOMB_GUARD.lifted(), Image.open(path) as img:
            img = ImageOps.exif_transpose(img) or img
            return _pil_rgb8(img)
    except UnidentifiedImageError as e:
        raise DatasetError(f"{path}: not an image file PIL can read",
                           hint="expected TIFF, PNG, JPEG, BMP, WebP or GIF") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise DatasetError(f"{path}: cannot decode the image ({e}); truncated or corrupt?") from e


class WholeImageRaster(_BaseRaster):
    """Any image PIL reads, decoded whole once (RGB, EXIF orientation applied).

    ``windowed`` is False: memory is the full decoded image (see the module docstring).
    """

    def __init__(self, path: str | Path, *, geo: GeoTransform | None = None) -> None:
        self.path = Path(path)
        self.geo = geo
        self._image: np.ndarray | None = decode_whole(self.path)
        self.height, self.width = self._image.shape[:2]

    def _read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        image = self._image
        if image is None:
            raise DatasetError(f"{self.path}: read after close()")
        return image[y0:y1, x0:x1].copy()

    def close(self) -> None:
        """Drop the decoded image."""
        self._image = None


class TiffRaster(_BaseRaster):
    """A TIFF / GeoTIFF read by tile or strip (see ``_tiff_windows.TiffWindows``)."""

    def __init__(self, windows: Any) -> None:
        self._windows = windows
        self.path = windows.path
        self.geo = windows.geo
        self.width, self.height = windows.width, windows.height
        self.windowed = windows.windowed

    @property
    def segments_decoded(self) -> int:
        """How many TIFF segments (tiles, strips, or row blocks of uncompressed strips) this
        reader has read and decoded so far, per sample plane."""
        return int(self._windows.decodes)

    def _read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._windows.read(x0, y0, x1, y1)

    def close(self) -> None:
        """Close the file and drop the cache."""
        self._windows.close()


class PngRaster(_BaseRaster):
    """A non-interlaced PNG read in row bands (see ``_png_bands.PngBands``)."""

    windowed = True

    def __init__(self, bands: Any) -> None:
        self._bands = bands
        self._lock = threading.Lock()
        self.path = bands.path
        self.width, self.height = bands.width, bands.height

    @property
    def bytes_fed(self) -> int:
        """Compressed IDAT bytes fed to the decompressor so far (restarts included)."""
        return int(self._bands.bytes_fed)

    def _read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        with self._lock:
            return self._bands.read(x0, y0, x1, y1)

    def close(self) -> None:
        """Close the file and drop the rows kept."""
        with self._lock:
            self._bands.close()


def _open_tiff(path: Path, cache_bytes: int) -> _BaseRaster:
    from danlu.infer._tiff_windows import TiffWindows

    windows = TiffWindows(path, to_rgb=to_rgb8, cache_bytes=cache_bytes)
    if windows.unsupported is None:
        return TiffRaster(windows)
    reason, geo = windows.unsupported, windows.geo
    windows.close()
    try:
        return WholeImageRaster(path, geo=geo)
    except DatasetError as e:
        raise DatasetError(f"{path}: {reason}, and PIL cannot read it ({e.message})",
                           hint="convert it to 8-bit RGB, e.g. gdal_translate -b 1 -b 2 -b 3 "
                                "-ot Byte -scale -co TILED=YES") from e


def _open_png(path: Path, cache_bytes: int) -> _BaseRaster:
    from danlu.infer._png_bands import PngBands, read_png_header

    header = read_png_header(path)
    if header.interlaced:
        return WholeImageRaster(path)
    return PngRaster(PngBands(path, header, to_rgb=to_rgb8, cache_bytes=cache_bytes))


def open_raster(source: str | Path | np.ndarray, *,
                cache_bytes: int = DEFAULT_CACHE_BYTES) -> Raster:
    """Open an image for reading by window.

    Args:
        source: a numpy array, or the path of a TIFF / GeoTIFF, PNG or any image PIL reads.
        cache_bytes: bound of the reader's cache of decoded data (see the memory rule in the
            module docstring).

    Returns:
        An ``ArrayRaster``, ``TiffRaster``, ``PngRaster`` or ``WholeImageRaster``.

    Raises:
        DatasetError: the file is missing, not an image, truncated, or of an unsupported layout.
    """
    if isinstance(source, np.ndarray):
        return ArrayRaster(source)
    path = Path(source)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise DatasetError(f"{path}: cannot open image ({e.strerror or e})") from e
    if head[:4] in _TIFF_MAGIC:
        return _open_tiff(path, cache_bytes)
    if head == _PNG_SIGNATURE:
        return _open_png(path, cache_bytes)
    return WholeImageRaster(path)


__all__ = ["Raster", "ArrayRaster", "TiffRaster", "PngRaster", "WholeImageRaster",
           "open_raster", "to_rgb8", "decode_whole", "DEFAULT_CACHE_BYTES"]
