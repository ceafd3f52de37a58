"""A fast training cache: decoded, resized images and their boxes in one memory-mapped file.

Decoding JPEGs and parsing annotation files on every epoch costs more than the model on small
inputs. :func:`pack_dataset` does it once and writes a single file that
:class:`PackedDataset` memory-maps: reading an item is a copy of ``S x S x 3`` bytes and a
slice of the box arrays.

Resizing (``mode``):

* ``"letterbox"`` (default): scale by ``s = S / max(W, H)`` to ``round(W s) x round(H s)``
  (PIL bilinear, which antialiases when shrinking), placed at the top-left of an ``S x S``
  canvas filled with ``pad_value``; boxes are multiplied by ``(new_w / W, new_h / H)``, so
  no offset is involved;
* ``"resize"``: stretch to ``S x S`` (aspect ratio not kept); boxes by ``(S / W, S / H)``.

The stored pixels are exactly what ``PIL.Image.open(f).convert("RGB").resize(..., BILINEAR)``
gives, so the pack matches a decode-every-time pipeline bit for bit.

File layout (little endian; version 1)::

    b"DANLUPK\\x01" | uint64 header length L | L bytes of JSON header | zero padding |
    arrays, each at the 64-byte-aligned offset the header gives

The header holds ``class_names``, ``ids``, ``img_size``, ``mode``, ``pad_value`` and, per
array, ``{"offset", "dtype", "shape"}``. Arrays: ``images`` uint8 ``[N, S, S, 3]``,
``box_offsets`` int64 ``[N + 1]`` (boxes of image ``i`` are rows ``box_offsets[i]`` to
``box_offsets[i + 1]``), ``boxes`` float32 ``[M, 4]`` (``xyxy`` in pack pixels), ``labels``
int64 ``[M]``, ``sizes`` int64 ``[N, 2]`` (original width, height), ``scales`` float64
``[N, 2]`` (``sx, sy``), optional ``polygons`` float32 ``[M, 4, 2]`` and ``flag_<name>`` bool
``[M]`` per box flag.

Example:
    >>> import tempfile, pathlib
    >>> from danlu.data.synth import synthesize
    >>> ds = synthesize("shapes", 3, seed=0, image_size=(96, 64), scale_range=(12, 24))
    >>> path = pack_dataset(ds, pathlib.Path(tempfile.mkdtemp()) / "train.pack", img_size=48)
    >>> pk = PackedDataset(path)
    >>> image, det = pk[0]
    >>> len(pk), image.shape, image.dtype
    (3, (48, 48, 3), dtype('uint8'))
    >>> bool(abs(det.xyxy[0, 0] * 2 - ds[0].detections.xyxy[0, 0]) < 1e-4)  # scale 0.5
    True
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from PIL import Image

from danlu.errors import ConfigError, DatasetError
from danlu.structures import Dataset, Detections

MAGIC = b"DANLUPK\x01"
_ALIGN = 64
MODES = ("letterbox", "resize")


def resized_shape(width: int, height: int, img_size: int,
                  mode: str = "letterbox") -> tuple[int, int]:
    """``(new_width, new_height)`` of the image content inside the ``img_size`` square.

    Example:
        >>> resized_shape(640, 480, 320), resized_shape(640, 480, 320, "resize")
        ((320, 240), (320, 320))
    """
    if mode == "resize":
        return img_size, img_size
    if mode != "letterbox":
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    s = img_size / max(width, height)
    return (min(img_size, max(1, round(width * s))), min(img_size, max(1, round(height * s))))


def resize_image(image: np.ndarray | Image.Image, img_size: int, mode: str = "letterbox",
                 pad_value: int = 114) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize an RGB image as the pack stores it: ``(S x S x 3 uint8 array, (sx, sy))``.

    Boxes in the original image map to the result by multiplying x by ``sx`` and y by ``sy``.

    Example:
        >>> out, (sx, sy) = resize_image(np.zeros((30, 60, 3), np.uint8), 20)
        >>> out.shape, sx, round(sy, 4), int(out[15, 0, 0])  # rows 10..19 are padding
        ((20, 20, 3), 0.3333333333333333, 0.3333, 114)
    """
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    nw, nh = resized_shape(w, h, img_size, mode)
    resized = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    if (nw, nh) == (img_size, img_size):
        out = np.array(resized)
    else:
        out = np.full((img_size, img_size, 3), pad_value, np.uint8)
        out[:nh, :nw] = resized
    return out, (nw / w, nh / h)


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def pack_dataset(
    ds: Dataset,
    path: str | os.PathLike[str],
    img_size: int = 640,
    *,
    mode: str = "letterbox",
    pad_value: int = 114,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> Path:
    """Decode, resize and write every image of ``ds`` and its boxes into one pack file.

    Args:
        ds: the dataset (images as paths, bytes or arrays).
        path: the pack file to write (written to a temporary sibling, then renamed).
        img_size: side ``S`` of the stored square images.
        mode: ``"letterbox"`` or ``"resize"`` (see the module docstring).
        pad_value: grey level of the letterbox padding.
        progress: optional wrapper around the image iteration (e.g. a progress bar).

    Returns:
        ``Path(path)``.
    """
    if img_size <= 0:
        raise ConfigError(f"img_size must be > 0, got {img_size}")
    resized_shape(1, 1, img_size, mode)  # validates mode
    path = Path(path)
    n = len(ds)
    dets = ds.detections()
    lens = np.array([len(d) for d in dets], np.int64)
    has_boxes = [d for d in dets if len(d)]
    oriented = bool(has_boxes) and all(d.polygons is not None for d in has_boxes)
    if not oriented and any(d.polygons is not None for d in has_boxes):
        raise DatasetError("pack: some samples have oriented boxes and others not")
    flag_names = sorted({k for d in dets for k in d.flags})
    sizes = np.array([[s.width, s.height] for s in ds], np.int64).reshape(n, 2)
    arrays: dict[str, tuple[str, tuple[int, ...]]] = {
        "images": ("uint8", (n, img_size, img_size, 3)),
        "box_offsets": ("int64", (n + 1,)),
        "boxes": ("float32", (int(lens.sum()), 4)),
        "labels": ("int64", (int(lens.sum()),)),
        "sizes": ("int64", (n, 2)),
        "scales": ("float64", (n, 2)),
    }
    if oriented:
        arrays["polygons"] = ("float32", (int(lens.sum()), 4, 2))
    for k in flag_names:
        arrays[f"flag_{k}"] = ("bool", (int(lens.sum()),))
    header: dict[str, Any] = {
        "version": 1, "img_size": img_size, "mode": mode, "pad_value": pad_value,
        "class_names": list(ds.class_names),
        "ids": [s.id if isinstance(s.id, (int, str)) or s.id is None else str(s.id)
                for s in ds],
        "arrays": {},
    }
    # offsets depend on the header length, which depends on the offsets' digits: reserve room
    placeholder = orjson.dumps(header | {"arrays": {k: {"offset": 10**15, "dtype": dt,
                                                        "shape": list(sh)}
                                                    for k, (dt, sh) in arrays.items()}})
    pos = _aligned(len(MAGIC) + 8 + len(placeholder) + 64)
    for name, (dt, shape) in arrays.items():
        header["arrays"][name] = {"offset": pos, "dtype": dt, "shape": list(shape)}
        pos = _aligned(pos + int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize)
    blob = orjson.dumps(header)
    total = pos
    path.parent.mkdir(parents=True, exist_ok=True)
    from danlu.data._atomic import temp_sibling

    fd, tmp = temp_sibling(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(blob)) + blob)
            f.truncate(total)
        maps = _open_arrays(tmp, header, "r+")
        scales = maps["scales"]
        indices: Iterable[int] = range(n)
        for i in progress(indices) if progress is not None else indices:
            img = ds.samples[i].load_image()
            h, w = img.shape[:2]
            if (w, h) != tuple(sizes[i]):
                sizes[i] = (w, h)  # trust the pixels over a stale header size
            maps["images"][i], scales[i] = resize_image(img, img_size, mode, pad_value)
        maps["sizes"][:] = sizes
        maps["box_offsets"][:] = np.concatenate([[0], np.cumsum(lens)])
        if lens.sum():
            sx = np.repeat(scales[:, 0], lens)[:, None]
            sy = np.repeat(scales[:, 1], lens)[:, None]
            xyxy = np.concatenate([d.xyxy for d in dets]).astype(np.float64)
            maps["boxes"][:] = xyxy * np.concatenate([sx, sy, sx, sy], 1)
            maps["labels"][:] = np.concatenate([d.labels for d in dets])
            if oriented:
                poly = np.concatenate([d.polygons for d in has_boxes]).astype(np.float64)
                maps["polygons"][:] = poly * np.stack([sx, sy], -1)
            for k in flag_names:
                maps[f"flag_{k}"][:] = np.concatenate([d.flag(k) for d in dets])
        for m in maps.values():
            if isinstance(m, np.memmap):
                m.flush()
        del maps, scales
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _open_arrays(path: str | Path, header: dict[str, Any], mode: str) -> dict[str, np.ndarray]:
    """Views of the arrays in the file: ``np.memmap`` for writing (``"r+"``); for reading,
    plain read-only arrays over one ``mmap`` (slicing them is cheaper than slicing memmaps)."""
    buf = None
    if mode == "r":
        with open(path, "rb") as f:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    out = {}
    for name, a in header["arrays"].items():
        shape = tuple(a["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            out[name] = np.zeros(shape, a["dtype"])
        elif buf is not None:
            out[name] = np.frombuffer(buf, a["dtype"], count, a["offset"]).reshape(shape)
        else:
            out[name] = np.memmap(path, dtype=a["dtype"], mode=mode, offset=a["offset"],
                                  shape=shape)
    return out


def read_pack_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON header of a pack file (raises :class:`DatasetError` when it is not one)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            start = f.read(len(MAGIC) + 8)
            if len(start) < len(MAGIC) + 8 or start[:len(MAGIC)] != MAGIC:
                raise DatasetError(f"{path}: not a danlu pack file (bad magic)",
                                   hint="create one with `danlu data pack`")
            (length,) = struct.unpack("<Q", start[len(MAGIC):])
            header = orjson.loads(f.read(length))
    except OSError as e:
        raise DatasetError(f"{path}: cannot read pack file ({e.strerror or e})") from e
    except orjson.JSONDecodeError as e:
        raise DatasetError(f"{path}: corrupt pack header ({e})") from e
    end = max((a["offset"] + int(np.prod(a["shape"])) * np.dtype(a["dtype"]).itemsize
               for a in header.get("arrays", {}).values()), default=0)
    if path.stat().st_size < end:
        raise DatasetError(f"{path}: truncated pack file ({path.stat().st_size} < {end} bytes)")
    return header


class PackedDataset:
    """Read a pack file written by :func:`pack_dataset`; a map-style dataset for DataLoader.

    ``pk[i]`` is ``(image, detections)``: an ``S x S x 3`` uint8 array (a private, writable
    copy) and its :class:`Detections` in pack pixels. The file is memory-mapped on first use
    in each process, so the object pickles cheaply into DataLoader workers.

    Attributes:
        class_names, ids, img_size, mode: from the header.
        sizes: ``[N, 2]`` original ``(width, height)``; scales: ``[N, 2]`` ``(sx, sy)``
            (original pixels times the scale give pack pixels).

    Example:
        >>> # loader = torch.utils.data.DataLoader(PackedDataset("train.pack"), batch_size=16,
        >>> #     shuffle=True, num_workers=2, collate_fn=lambda batch: tuple(zip(*batch)))
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.header = read_pack_header(self.path)
        self.class_names: list[str] = list(self.header["class_names"])
        self.ids: list[Any] = list(self.header["ids"])
        self.img_size: int = int(self.header["img_size"])
        self.mode: str = self.header["mode"]
        self._maps: dict[str, np.ndarray] | None = None

    def _arrays(self) -> dict[str, np.ndarray]:
        if self._maps is None:
            self._maps = _open_arrays(self.path, self.header, "r")
            self._offsets = np.asarray(self._maps["box_offsets"])
            self._flags = [k[5:] for k in self._maps if k.startswith("flag_")]
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_maps"] = None
        return state

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def sizes(self) -> np.ndarray:
        return np.asarray(self._arrays()["sizes"])

    @property
    def scales(self) -> np.ndarray:
        return np.asarray(self._arrays()["scales"])

    def image(self, index: int) -> np.ndarray:
        """The stored image ``index`` (a writable copy)."""
        return np.array(self._arrays()["images"][index])

    def detections(self, index: int) -> Detections:
        """The boxes of image ``index``, in pack pixels."""
        m = self._arrays()
        a, b = int(self._offsets[index]), int(self._offsets[index + 1])
        return Detections(
            np.array(m["boxes"][a:b]), np.array(m["labels"][a:b]),
            polygons=np.array(m["polygons"][a:b]) if "polygons" in m else None,
            flags={k: np.array(m[f"flag_{k}"][a:b]) for k in self._flags})

    # -- the TrainingData protocol (danlu.structures.TrainingData) ---------------------------
    def item_size(self, index: int) -> tuple[int, int]:
        """``(width, height)`` of stored image ``index``: the pack's square."""
        return self.img_size, self.img_size

    def item_boxes(self, index: int) -> Detections:
        """The boxes of image ``index`` in pack pixels (no pixels read)."""
        return self.detections(index)

    def load_item(self, index: int) -> tuple[np.ndarray, Detections]:
        """Stored image ``index`` and its boxes, in pack pixels."""
        return self.image(index), self.detections(index)

    def __getitem__(self, index: int) -> tuple[np.ndarray, Detections]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = int(index) % len(self)
        return self.image(index), self.detections(index)

    def __repr__(self) -> str:
        return (f"PackedDataset({str(self.path)!r}, n={len(self)}, img_size={self.img_size}, "
                f"mode={self.mode!r})")


__all__ = ["pack_dataset", "PackedDataset", "resize_image", "resized_shape", "read_pack_header",
           "MAGIC"]
