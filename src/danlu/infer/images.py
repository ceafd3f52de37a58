"""Decode the image files users feed a predictor into ``HxWx3`` uint8 RGB arrays.

:func:`read_image` turns a path or encoded bytes into the array a model sees, so that boxes
are in the image **as a viewer shows it**:

* **EXIF orientation** is applied (``PIL.ImageOps.exif_transpose``): a phone photo stored
  sideways with orientation 6 comes back upright. An unreadable EXIF block is ignored.
* **8-bit modes**: ``RGB`` as is; ``L`` (gray) repeated on 3 channels; ``1`` (bilevel) as 0 /
  255; ``CMYK``, ``YCbCr``, ``P`` (palette) and the rest by PIL's own conversion to RGB.
* **Alpha is dropped, never composited**: ``RGBA``, ``LA``, ``PA`` and a palette with a
  transparent index keep the colour stored under each pixel, whatever its opacity.
* **16-bit** gray (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``) maps to the nearest 8-bit
  level, ``(v + 128) // 257`` (65535 -> 255, 257 * k -> k), over the full range, where PIL's
  own ``convert("RGB")`` clips at 255. ``I`` (32-bit int, how some readers return 16-bit
  files) is clipped to [0, 65535] first, then mapped the same way.
* **float** (``F``): NaN and negatives become 0; when the largest value is at most 1 the image
  is taken as [0, 1], otherwise it is divided by its largest value; then ``round(v * 255)``.
* The first frame of an animated or multi-page file.

Errors are :class:`~danlu.errors.DatasetError` naming the file: ``"<path>: truncated image
..."`` for a file cut short (``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set),
``"<path>: not an image ..."`` for a file PIL cannot identify, ``"<path>: too large ..."``
above ``max_pixels``. PIL's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``) is lifted
only while the file's header is read, under a lock, and put back afterwards;
``max_pixels`` (default ``2**31``, None for no cap) is the cap instead.
:func:`try_read_image` returns the error text instead of raising, for runs over folders that
count the bad files.

Example:
    >>> import io
    >>> import numpy as np
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.fromarray(np.array([[0, 65535]], np.uint16)).save(buf, "PNG")  # 16-bit gray
    >>> read_image(buf.getvalue()).tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    >>> try_read_image(b"not an image")
    (None, '<12 bytes>: not an image (PIL cannot identify it)')
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import DatasetError

#: the default ``max_pixels``: width * height above which a file is refused
DEFAULT_MAX_PIXELS = 2**31

#: the EXIF tag of the orientation
_ORIENTATION = 0x0112

#: the PIL modes of 16-bit gray images
MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")

# Image.MAX_IMAGE_PIXELS is process-wide: one read at a time lifts it
_GUARD_LOCK = threading.Lock()

ImageSource = str | Path | bytes


class NotAnImage(DatasetError):
    """PIL cannot identify the file (text named ``.jpg``, zero bytes...)."""


class UnsupportedImageFormat(DatasetError):
    """An image, but of a format the caller does not accept."""


class ImageTooLarge(DatasetError):
    """More pixels than ``max_pixels`` (read from the header, before decoding)."""


class BrokenImage(DatasetError):
    """The header was read but the pixels cannot be decoded (truncated, corrupt)."""


def _describe(source: ImageSource) -> str:
    """How an error names ``source``: its path, or ``<N bytes>``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return str(source)


@contextmanager
def _guard_lifted() -> Iterator[None]:
    """PIL's decompression-bomb guard off within the block (the caller checks the size)."""
    from PIL import Image

    with _GUARD_LOCK:
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _open(source: ImageSource, where: str, max_pixels: int | None,
          formats: Collection[str] | None = None) -> Any:
    """The opened (not yet decoded) PIL image; DatasetError when it is none, not of
    ``formats`` (PIL's names, e.g. ``JPEG``) or too large."""
    from PIL import Image, UnidentifiedImageError

    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) \
        else source
    try:
        with _guard_lifted():
            im = Image.open(fp)
    except FileNotFoundError as e:
        raise DatasetError(f"{where}: no such file") from e
    except IsADirectoryError as e:
        raise DatasetError(f"{where}: is a folder, not an image file") from e
    except UnidentifiedImageError as e:
        raise NotAnImage(f"{where}: not an image (PIL cannot identify it)",
                           hint="expected a JPEG, PNG, TIFF, BMP, GIF or WebP file") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DatasetError(f"{where}: cannot read the image header ({e})") from e
    if formats is not None and im.format not in formats:
        im.close()
        raise UnsupportedImageFormat(f"{where}: {im.format} images are not accepted",
                                     hint="accepted: " + ", ".join(sorted(formats)))
    w, h = im.size
    if max_pixels is not None and w * h > max_pixels:
        im.close()
        raise ImageTooLarge(f"{where}: too large: {w}x{h} = {w * h} pixels > max_pixels "
                           f"{max_pixels}", hint="raise max_pixels, or read it by window")
    return im


def _decode(im: Any, where: str) -> None:
    """Decode the pixels of ``im``; DatasetError naming ``where`` when they are cut short."""
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        text = str(e)
        if isinstance(e, EOFError) or "truncated" in text or "broken data" in text:
            raise BrokenImage(f"{where}: truncated image ({text or 'unexpected end'})",
                               hint="the file was cut short: copy or download it again") from e
        raise BrokenImage(f"{where}: cannot decode the {im.format or 'image'} data "
                           f"({text})") from e


def _upright(im: Any) -> Any:
    """``im`` turned in place as its EXIF orientation (2-8) says; as is when it has none or
    the EXIF block cannot be read."""
    from PIL import ImageOps

    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
        if orientation in range(2, 9):
            ImageOps.exif_transpose(im, in_place=True)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        pass  # documented: a bad EXIF block leaves the pixels as stored
    return im


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(gray, np.uint8)[:, :, None], 3, axis=2)


def _from_16bit(values: np.ndarray) -> np.ndarray:
    """Values in [0, 65535] -> the nearest 8-bit level, ``(v + 128) // 257``."""
    v = np.asarray(values, np.uint32)
    return ((v + 128) // 257).astype(np.uint8)


def _from_int32(values: np.ndarray) -> np.ndarray:
    return _from_16bit(np.clip(np.asarray(values, np.int64), 0, 65535))


def _from_float(values: np.ndarray) -> np.ndarray:
    """Float values -> uint8: NaN / negatives 0; [0, 1] if the max is <= 1, else / max."""
    v = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    v = np.clip(v, 0.0, None)
    top = float(v.max()) if v.size else 0.0
    if top > 1.0:
        v = v / top
    return np.round(v * 255.0).astype(np.uint8)


#: gray modes whose values need scaling, and how
_SCALED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    **{m: _from_16bit for m in MODES_16BIT}, "I": _from_int32, "F": _from_float}


def pil_to_rgb(im: Any) -> np.ndarray:
    """A (decoded) PIL image of any mode -> ``HxWx3`` uint8 RGB, by the rules of the module
    doc (no EXIF turn here: :func:`read_image` does it first).

    Example:
        >>> from PIL import Image
        >>> pil_to_rgb(Image.new("RGBA", (2, 1), (10, 20, 30, 0))).tolist()
        [[[10, 20, 30], [10, 20, 30]]]
        >>> pil_to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).tolist()
        [[[255, 0, 0]]]
    """
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, np.uint8)
    if mode in _SCALED:
        return _gray3(_SCALED[mode](np.asarray(im)))
    if mode in ("L", "LA"):
        return _gray3(np.asarray(im.getchannel(0)))
    if mode in ("RGBA", "RGBX"):
        return np.ascontiguousarray(np.asarray(im, np.uint8)[:, :, :3])
    if mode in ("P", "PA"):
        im = im.convert("RGBA")  # the palette's colours; its transparency goes to alpha
        return np.ascontiguousarray(np.asarray(im, np.uint8)[:, :, :3])
    try:
        return np.asarray(im.convert("RGB"), np.uint8)
    except (ValueError, OSError) as e:
        raise DatasetError(f"cannot convert a PIL {mode} image to RGB ({e})") from e


def read_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               formats: Collection[str] | None = None) -> np.ndarray:
    """Decode an image file or encoded bytes to an ``HxWx3`` uint8 RGB array, upright as its
    EXIF orientation says (the module doc has every rule).

    Args:
        source: a path, or the encoded bytes of an image file.
        max_pixels: refuse files with more than this many pixels (width * height); None: no
            cap. PIL's own guard (``Image.MAX_IMAGE_PIXELS``) is lifted for this read only.
        formats: accept only these PIL formats (``JPEG``, ``PNG``...); None: any.

    Returns:
        ``HxWx3`` uint8 RGB; ``H, W`` are the displayed size (swapped for orientations 5-8).

    Raises:
        DatasetError: no such file, not an image (:class:`NotAnImage`), another format
            (:class:`UnsupportedImageFormat`), too large (:class:`ImageTooLarge`), truncated
            or undecodable (:class:`BrokenImage`); the message starts with the path (or
            ``<N bytes>``).
    """
    where = _describe(source)
    im = _open(source, where, max_pixels, formats)
    try:
        _decode(im, where)
        try:
            return pil_to_rgb(_upright(im))
        except DatasetError as e:
            raise DatasetError(f"{where}: {e.message}") from e
    finally:
        im.close()


def try_read_image(source: ImageSource, *, max_pixels: int | None = DEFAULT_MAX_PIXELS
                   ) -> tuple[np.ndarray | None, str | None]:
    """:func:`read_image` that reports instead of raising: ``(array, None)`` or
    ``(None, the error text)``; the text starts with the path (or ``<N bytes>``)."""
    try:
        return read_image(source, max_pixels=max_pixels), None
    except DatasetError as e:
        return None, e.message
    except (OSError, ValueError, MemoryError) as e:  # a permission error, a decoder's bug
        return None, f"{_describe(source)}: cannot read the image ({type(e).__name__}: {e})"


__all__ = ["read_image", "try_read_image", "pil_to_rgb", "DEFAULT_MAX_PIXELS", "MODES_16BIT",
           "ImageSource", "NotAnImage", "UnsupportedImageFormat", "ImageTooLarge", "BrokenImage"]
