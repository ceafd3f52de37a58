"""Image width and height from file headers, without decoding pixels.

Readers of formats that do not store the image size (YOLO, DOTA, sometimes VOC) need it to
denormalize or validate boxes. Reading the first bytes of the file is enough for JPEG, PNG,
BMP, GIF, WebP and TIFF; anything else falls back to PIL's lazy ``Image.open(...).size`` (which
also reads only the header, but is measured about 10x slower per file: see
``benchmarks/data.py``).

The size is that of the stored pixels: an EXIF orientation tag is not applied (PIL's
``.size`` does not apply it either).

Example:
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (32, 24)).save(buf, "PNG")
    >>> image_size_from_bytes(buf.getvalue())
    (32, 24)
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

from danlu.errors import DatasetError

_HEAD = 512  # enough for PNG/GIF/BMP/WebP; JPEG and TIFF may need more (read on demand)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(width, height)`` of the image file at ``path``, read from its header.

    Args:
        path: an image file (JPEG, PNG, BMP, GIF, WebP, TIFF; other formats through PIL).

    Returns:
        ``(width, height)`` in pixels.

    Raises:
        DatasetError: the file is missing or is not a readable image.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD)
            size = _from_head(head, f)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image ({e.strerror or e})") from e
    if size is None:
        size = _pil_size(path)
    return size


def image_size_from_bytes(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of an encoded image held in memory (see :func:`image_size`)."""
    f = io.BytesIO(data)
    size = _from_head(data[:_HEAD], f)
    return size if size is not None else _pil_size(io.BytesIO(data))


def image_format(head: bytes) -> str | None:
    """The file extension (``"jpg"``, ``"png"`` ...) matching an image's first bytes, or None.

    Example:
        >>> image_format(b"\\x89PNG\\r\\n\\x1a\\n....")
        'png'
    """
    if head[:3] == b"\xff\xd8\xff":
        return "jpg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM":
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tif"
    return None


def _pil_size(src: str | os.PathLike[str] | io.BytesIO) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(src) as im:
            return int(im.size[0]), int(im.size[1])
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        where = src if isinstance(src, (str, Path)) else "image bytes"
        raise DatasetError(f"{where}: not a readable image ({e})") from e


def _from_head(head: bytes, f: io.IOBase | io.BufferedReader) -> tuple[int, int] | None:
    """Parse the size from ``head`` (reading more from ``f`` if needed); None if unknown."""
    try:
        kind = image_format(head)
        if kind == "png" and head[12:16] == b"IHDR":
            w, h = struct.unpack(">II", head[16:24])
        elif kind == "jpg":
            return _jpeg(f)
        elif kind == "gif":
            w, h = struct.unpack("<HH", head[6:10])
        elif kind == "bmp":
            header_size = struct.unpack("<I", head[14:18])[0]
            if header_size == 12:
                w, h = struct.unpack("<HH", head[18:22])
            else:
                w, h = struct.unpack("<ii", head[18:26])
                h = abs(h)
        elif kind == "webp":
            return _webp(head)
        elif kind == "tif":
            return _tiff(f)
        else:
            return None
    except (struct.error, IndexError, ValueError):
        return None
    return (int(w), int(h)) if w > 0 and h > 0 else None


def _jpeg(f: io.IOBase | io.BufferedReader) -> tuple[int, int] | None:
    # Walk the marker segments until a start-of-frame (SOF0..SOF15 except DHT/JPG/DAC).
    f.seek(2)
    while True:
        b = f.read(1)
        while b and b != b"\xff":
            b = f.read(1)
        while b == b"\xff":
            b = f.read(1)
        if not b:
            return None
        marker = b[0]
        if marker in (0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7):
            continue  # markers without a length
        seg = f.read(2)
        if len(seg) < 2:
            return None
        length = struct.unpack(">H", seg)[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            data = f.read(5)
            if len(data) < 5:
                return None
            h, w = struct.unpack(">HH", data[1:5])
            return (w, h) if w > 0 and h > 0 else None
        if length < 2:
            return None
        f.seek(length - 2, os.SEEK_CUR)


def _webp(head: bytes) -> tuple[int, int] | None:
    chunk = head[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        b = head[21:25]
        w = 1 + (((b[1] & 0x3F) << 8) | b[0])
        h = 1 + (((b[3] & 0x0F) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
        return w, h
    if chunk == b"VP8X":
        w = 1 + int.from_bytes(head[24:27], "little")
        h = 1 + int.from_bytes(head[27:30], "little")
        return w, h
    return None


def _tiff(f: io.IOBase | io.BufferedReader) -> tuple[int, int] | None:
    f.seek(0)
    order = "<" if f.read(2) == b"II" else ">"
    f.seek(4)
    (ifd,) = struct.unpack(order + "I", f.read(4))
    f.seek(ifd)
    (count,) = struct.unpack(order + "H", f.read(2))
    found: dict[int, int] = {}
    for _ in range(min(count, 4096)):
        entry = f.read(12)
        if len(entry) < 12:
            break
        tag, typ = struct.unpack(order + "HH", entry[:4])
        if tag in (256, 257):
            if typ == 3:  # SHORT
                value = struct.unpack(order + "H", entry[8:10])[0]
            elif typ == 4:  # LONG
                value = struct.unpack(order + "I", entry[8:12])[0]
            else:
                return None
            found[tag] = value
            if len(found) == 2:
                break
    if 256 in found and 257 in found and found[256] > 0 and found[257] > 0:
        return found[256], found[257]
    return None


__all__ = ["image_size", "image_size_from_bytes", "image_format"]
