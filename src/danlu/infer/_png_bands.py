"""Streaming PNG decoding in row bands, for windowed reads of huge PNGs.

A PNG's pixels are one zlib stream split over its ``IDAT`` chunks; each row starts with a
filter byte (None, Sub, Up, Average, Paeth: PNG specification, section 9) and is predicted
from the row above. So rows can only be decoded in order, but only the rows a window needs
have to be held: :class:`PngBands` feeds the ``IDAT`` bytes to a ``zlib.decompressobj`` a
piece at a time, unfilters a batch of rows with a numba kernel, converts them to RGB and keeps
the most recent rows in a ring of at most ``cache_bytes`` (never fewer rows than the window
asks). A window whose rows are all decoded and still in the ring costs nothing; one further
down decodes on from where the stream is; one above the ring restarts from the first row.

Handled: bit depths 1, 2, 4, 8, 16; colour types gray (0), RGB (2), palette (3, with a
``PLTE`` of any length: indices past its end read as black), gray+alpha (4), RGBA (6).
Low-bit gray is scaled to 8 bits (``v * 255 / (2**depth - 1)``); ``tRNS`` is ignored (alpha is
dropped anyway). Interlaced (Adam7) files are not read here: ``read_png_header`` reports
``interlaced`` and the caller decodes them whole.

Example:
    >>> import io, tempfile, numpy as np
    >>> from PIL import Image
    >>> from danlu.infer.raster import to_rgb8
    >>> image = np.random.default_rng(0).integers(0, 256, (60, 40, 3), dtype=np.uint8)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     Image.fromarray(image).save(f"{tmp}/a.png")
    ...     header = read_png_header(f"{tmp}/a.png")
    ...     bands = PngBands(f"{tmp}/a.png", header, to_rgb=to_rgb8)
    ...     same = np.array_equal(bands.read(5, 10, 25, 30), image[10:30, 5:25])
    ...     bands.close()
    >>> same, header.width, header.height, header.color_type
    (True, 40, 60, 2)
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from danlu.errors import DatasetError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_FEED_BYTES = 1 << 16  # compressed bytes read from the file at a time
_BATCH_BYTES = 1 << 19  # decompressed bytes unfiltered at a time


@dataclass(frozen=True)
class PngHeader:
    """What a PNG's chunks say, before any pixel is decoded.

    Attributes:
        width, height: in pixels.
        bit_depth: bits per sample (1, 2, 4, 8 or 16).
        color_type: 0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA.
        interlaced: Adam7 interlacing.
        palette: ``[256, 3]`` uint8 (``PLTE``, zero-padded), or None.
        idat: ``(file offset, length)`` of each ``IDAT`` chunk's data.
    """

    width: int
    height: int
    bit_depth: int
    color_type: int
    interlaced: bool
    palette: np.ndarray | None
    idat: tuple[tuple[int, int], ...]

    @property
    def channels(self) -> int:
        return _CHANNELS[self.color_type]

    @property
    def row_bytes(self) -> int:
        """Bytes of one unfiltered row (without its filter byte)."""
        return (self.width * self.channels * self.bit_depth + 7) // 8

    @property
    def pixel_bytes(self) -> int:
        """The filters' ``bpp``: bytes per complete pixel, at least 1."""
        return max(1, self.channels * self.bit_depth // 8)


def _check_ihdr(path: Path, data: bytes) -> tuple[int, int, int, int, bool]:
    if len(data) != 13:
        raise DatasetError(f"{path}: IHDR is {len(data)} bytes, expected 13; corrupt PNG?")
    width, height, depth, ctype, method, filt, interlace = struct.unpack(">IIBBBBB", data)
    if width == 0 or height == 0 or ctype not in _DEPTHS or depth not in _DEPTHS[ctype]:
        raise DatasetError(f"{path}: IHDR says {width}x{height}, colour type {ctype}, bit depth "
                           f"{depth}: not a valid PNG image")
    if method != 0 or filt != 0 or interlace not in (0, 1):
        raise DatasetError(f"{path}: IHDR compression {method}, filter {filt}, interlace "
                           f"{interlace}: expected 0, 0 and 0 or 1")
    return width, height, depth, ctype, interlace == 1


def _palette(path: Path, data: bytes) -> np.ndarray:
    if len(data) % 3 or not 3 <= len(data) <= 768:
        raise DatasetError(f"{path}: PLTE of {len(data)} bytes, expected 3 to 768, a multiple "
                           "of 3")
    table = np.zeros((256, 3), np.uint8)
    table[: len(data) // 3] = np.frombuffer(data, np.uint8).reshape(-1, 3)
    return table


def read_png_header(path: str | Path) -> PngHeader:
    """Scan the chunks of the PNG at ``path`` (IDAT chunks are skipped, not read).

    Raises:
        DatasetError: not a PNG, a bad IHDR or PLTE (CRCs are checked), a chunk running past
            the end of the file, no IEND (truncated), no IDAT, or a palette image without PLTE.
    """
    path = Path(path)
    size = os.path.getsize(path)
    ihdr, palette, idat = None, None, []
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            raise DatasetError(f"{path}: no PNG signature")
        pos = 8
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise DatasetError(f"{path}: the file ends at byte {pos}, before IEND; "
                                   "truncated?")
            length, ctype = struct.unpack(">I4s", head)
            end = pos + 12 + length
            if end > size:
                raise DatasetError(f"{path}: chunk {ctype.decode('latin-1')} at byte {pos} runs "
                                   f"past the end of the file ({size} bytes); truncated?")
            if ihdr is None and ctype != b"IHDR":
                raise DatasetError(f"{path}: the first chunk is not IHDR")
            if ctype in (b"IHDR", b"PLTE"):
                data, crc = f.read(length), f.read(4)
                if zlib.crc32(ctype + data) != int.from_bytes(crc, "big"):
                    raise DatasetError(f"{path}: CRC mismatch in chunk {ctype.decode()}; "
                                       "corrupt PNG?")
                if ctype == b"IHDR":
                    ihdr = _check_ihdr(path, data)
                else:
                    palette = _palette(path, data)
            elif ctype == b"IDAT":
                idat.append((pos + 8, length))
            elif ctype == b"IEND":
                break
            f.seek(end)
            pos = end
    assert ihdr is not None
    if not idat:
        raise DatasetError(f"{path}: no IDAT chunk (no image data)")
    if ihdr[3] == 3 and palette is None:
        raise DatasetError(f"{path}: a palette image without a PLTE chunk")
    return PngHeader(*ihdr, palette=palette, idat=tuple(idat))


@numba.njit(cache=True, nogil=True)
def _unfilter(data: np.ndarray, prev: np.ndarray, stride: int, bpp: int,
              out: np.ndarray) -> int:
    """Undo the PNG filters of ``out.shape[0]`` rows in place of ``out``.

    ``data`` holds the rows as stored (a filter byte, then ``stride`` bytes, per row); ``prev``
    is the unfiltered row above the first (zeros above the image). Returns -1, or the index of
    the first row whose filter byte is not 0-4.
    """
    for r in range(out.shape[0]):
        base = r * (stride + 1) + 1
        kind = data[base - 1]
        cur = out[r]
        up = prev if r == 0 else out[r - 1]
        if kind == 0:
            for i in range(stride):
                cur[i] = data[base + i]
        elif kind == 1:
            for i in range(stride):
                left = cur[i - bpp] if i >= bpp else 0
                cur[i] = (data[base + i] + left) & 0xFF
        elif kind == 2:
            for i in range(stride):
                cur[i] = (data[base + i] + up[i]) & 0xFF
        elif kind == 3:
            for i in range(stride):
                left = np.int32(cur[i - bpp]) if i >= bpp else np.int32(0)
                cur[i] = (data[base + i] + ((left + np.int32(up[i])) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = np.int32(cur[i - bpp]) if i >= bpp else np.int32(0)
                b = np.int32(up[i])
                c = np.int32(up[i - bpp]) if i >= bpp else np.int32(0)
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (data[base + i] + pred) & 0xFF
        else:
            return r
    return -1


def _unpack_bits(rows: np.ndarray, depth: int, width: int) -> np.ndarray:
    """``[k, width]`` samples of ``depth`` < 8 bits, packed most significant bits first."""
    shifts = np.arange(8 - depth, -1, -depth, dtype=np.uint8)
    values = (rows[:, :, None] >> shifts) & np.uint8((1 << depth) - 1)
    return values.reshape(rows.shape[0], -1)[:, :width]


class PngBands:
    """Rows of a non-interlaced PNG decoded in order, the latest kept in a ring.

    Args:
        path: the PNG file.
        header: its :func:`read_png_header` (not interlaced).
        to_rgb: converts samples (``k x W x C``, uint8 or uint16) to ``k x W x 3`` uint8.
        cache_bytes: bound of the ring of decoded RGB rows (at least one window's rows).

    ``bytes_fed`` counts the compressed bytes given to the decompressor (restarts included).
    Not thread-safe: the caller locks.
    """

    def __init__(self, path: str | Path, header: PngHeader, *,
                 to_rgb: Callable[[np.ndarray], np.ndarray],
                 cache_bytes: int = 256 << 20) -> None:
        if header.interlaced:
            raise DatasetError(f"{path}: interlaced PNG cannot be read in row bands")
        self.path = Path(path)
        self.header = header
        self.width, self.height = header.width, header.height
        self._to_rgb = to_rgb
        self._ring_rows = min(header.height, max(1, cache_bytes // (3 * header.width)))
        self._ring: np.ndarray | None = None
        self._f = open(self.path, "rb")  # noqa: SIM115  (closed by close())
        self.bytes_fed = 0
        self._restart()

    def _restart(self) -> None:
        """Back to the first row: a fresh decompressor, nothing decoded."""
        self._z = zlib.decompressobj()
        self._chunk, self._chunk_pos = 0, 0
        self._out = bytearray()
        self._prev = np.zeros(self.header.row_bytes, np.uint8)
        self._next = 0  # the next row the stream gives
        self._lo = 0  # the first row still in the ring

    def read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Rows ``y0:y1``, columns ``x0:x1`` (already checked) as ``H x W x 3`` uint8."""
        if self._f is None:
            raise DatasetError(f"{self.path}: read after close()")
        if self._ring is None or y1 - y0 > self._ring_rows:
            self._grow(max(y1 - y0, self._ring_rows))
        if y0 < self._lo:
            self._restart()
        if y1 > self._next:
            self._decode_to(y1)
        assert self._ring is not None
        return self._ring[np.arange(y0, y1) % self._ring_rows, x0:x1]

    def _grow(self, rows: int) -> None:
        """A ring of ``rows`` rows, keeping the rows held."""
        ring = np.empty((rows, self.width, 3), np.uint8)
        if self._ring is not None and self._next > self._lo:
            held = np.arange(self._lo, self._next)
            ring[held % rows] = self._ring[held % self._ring_rows]
        self._ring, self._ring_rows = ring, rows

    def _decode_to(self, y1: int) -> None:
        h = self.header
        stride = h.row_bytes
        batch = max(1, min(self._ring_rows, _BATCH_BYTES // (stride + 1)))
        assert self._ring is not None
        while self._next < y1:
            k = min(y1 - self._next, batch)
            data = self._take(k * (stride + 1), k)
            rows = np.empty((k, stride), np.uint8)
            bad = _unfilter(data, self._prev, stride, h.pixel_bytes, rows)
            if bad >= 0:
                raise DatasetError(f"{self.path}: row {self._next + bad} has filter type "
                                   f"{data[bad * (stride + 1)]}, expected 0-4; corrupt PNG?")
            self._prev = rows[-1].copy()
            self._ring[np.arange(self._next, self._next + k) % self._ring_rows] = \
                self._to_rgb(self._samples(rows))
            self._next += k
            self._lo = max(self._lo, self._next - self._ring_rows)

    def _samples(self, rows: np.ndarray) -> np.ndarray:
        """``k x W x C`` samples (uint8, uint16 for 16 bits; RGB for a palette)."""
        h = self.header
        k = rows.shape[0]
        if h.bit_depth == 16:
            return rows.view(">u2").reshape(k, h.width, h.channels).astype(np.uint16)
        if h.bit_depth == 8:
            s = rows.reshape(k, h.width, h.channels)
        else:
            s = _unpack_bits(rows, h.bit_depth, h.width)[:, :, None]
        if h.color_type == 3:
            assert h.palette is not None
            return h.palette[s[:, :, 0]]
        if h.bit_depth < 8:
            s = s * np.uint8(255 // ((1 << h.bit_depth) - 1))
        return s

    def _take(self, n: int, rows: int) -> np.ndarray:
        """The next ``n`` decompressed bytes (for ``rows`` rows) as uint8."""
        buf = self._out
        while len(buf) < n:
            src = self._z.unconsumed_tail or (None if self._z.eof else self._feed())
            if not src:
                raise DatasetError(f"{self.path}: the image data ends before row "
                                   f"{self._next + (len(buf) // (n // rows))} of {self.height}; "
                                   "truncated?")
            try:
                buf += self._z.decompress(src, max(n - len(buf), 1 << 16))
            except zlib.error as e:
                raise DatasetError(f"{self.path}: corrupt image data near row {self._next} "
                                   f"({e})") from e
        out = np.frombuffer(buf, np.uint8, n).copy()
        del buf[:n]
        return out

    def _feed(self) -> bytes | None:
        """The next piece of IDAT data (at most ``_FEED_BYTES``), or None after the last."""
        idat = self.header.idat
        assert self._f is not None
        while self._chunk < len(idat):
            offset, length = idat[self._chunk]
            if self._chunk_pos >= length:
                self._chunk, self._chunk_pos = self._chunk + 1, 0
                continue
            k = min(_FEED_BYTES, length - self._chunk_pos)
            self._f.seek(offset + self._chunk_pos)
            data = self._f.read(k)
            self._chunk_pos += k
            self.bytes_fed += len(data)
            if len(data) < k:
                raise DatasetError(f"{self.path}: IDAT data cut short; truncated?")
            return data
        return None

    def close(self) -> None:
        """Close the file and drop the ring; later reads raise."""
        f, self._f = self._f, None
        if f is not None:
            f.close()
        self._ring = None
