"""Image sizes from headers agree with PIL on every supported format."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from danlu.data.imagesize import image_format, image_size, image_size_from_bytes
from danlu.errors import DatasetError

CASES = [("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("BMP", {}), ("GIF", {}),
         ("WEBP", {}), ("WEBP", {"lossless": True}), ("TIFF", {}), ("PPM", {})]


@pytest.mark.parametrize(("fmt", "kw"), CASES)
@pytest.mark.parametrize("size", [(1, 1), (37, 23), (640, 17)])
def test_matches_pil(tmp_path: Path, fmt: str, kw: dict, size: tuple[int, int]) -> None:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, fmt, **kw)
    data = buf.getvalue()
    assert image_size_from_bytes(data) == size
    p = tmp_path / f"x.{fmt.lower()}"
    p.write_bytes(data)
    assert image_size(p) == size


def test_jpeg_with_exif_and_format() -> None:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 20)).save(buf, "JPEG", exif=exif.tobytes())
    assert image_size_from_bytes(buf.getvalue()) == (30, 20)
    assert image_format(buf.getvalue()[:16]) == "jpg"


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DatasetError, match="not a readable image"):
        image_size(tmp_path / "x.png")
    with pytest.raises(DatasetError, match="cannot read image"):
        image_size(tmp_path / "missing.png")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n",
                                                b"II*\x00", b"MM\x00*", b"BM", b"GIF89a",
                                                b"RIFF\x00\x00\x00\x00WEBPVP8X"]))
def test_fuzz_headers(tail: bytes, head: bytes) -> None:
    try:
        w, h = image_size_from_bytes(head + tail)
        assert w > 0 and h > 0
    except DatasetError:
        pass
