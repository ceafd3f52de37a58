"""Shared pieces of the service tests: images as a client would send them, and a server."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def scene(seed: int = 3, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """A synthetic shapes scene, ``HxWx3`` uint8."""
    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=1, seed=seed, image_size=size, scale_range=(12, 28),
                    encode=False)
    return ds.samples[0].load_image()


def encode(arr: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **({"quality": 92} | kw if fmt == "JPEG" else kw))
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height`` (a decompression-bomb shape)."""
    raw = encode(np.zeros((1, 1, 3), np.uint8), "PNG")
    ihdr = raw[8 + 8:8 + 8 + 13]
    patched = struct.pack(">II", width, height) + ihdr[8:]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + patched) & 0xFFFFFFFF)
    return raw[:16] + patched + crc + raw[16 + 13 + 4:]


def exif_rotated_jpeg(arr: np.ndarray, orientation: int = 6) -> bytes:
    """``arr`` stored as a JPEG that a viewer shows turned by its EXIF ``orientation``."""
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in exposition ``text`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        base, _, rest = key.partition("{")
        if base == name and (not want or rest.rstrip("}") == want):
            total += float(value)
    return total


def rows(det) -> list[tuple]:
    """Detections -> ``(score, label, x1, y1, x2, y2)`` tuples."""
    return [(float(s), int(lab), *b.tolist())
            for b, lab, s in zip(det.xyxy, det.labels, det.scores, strict=True)]


def same(a: list[tuple], b: list[tuple], box_tol: float = 0.06) -> bool:
    """The same detections, in any order: each of ``a`` pairs with one of ``b`` of the same
    label, score within 2e-3 and box within ``box_tol`` px (the JSON rounds to 2 decimals;
    a batch of several images differs from one image alone in the last float bits)."""
    if len(a) != len(b):
        return False
    left = list(b)
    for row in a:
        for j, other in enumerate(left):
            if (row[1] == other[1] and abs(row[0] - other[0]) <= 2e-3
                    and np.allclose(row[2:], other[2:], atol=box_tol)):
                del left[j]
                break
        else:
            return False
    return True
