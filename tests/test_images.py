"""Decoding what users feed a predictor: EXIF orientation, 16-bit and float, CMYK, palettes,
alpha, bilevel, truncated and fake files, the decompression-bomb guard."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from danlu.errors import DatasetError
from danlu.infer.images import pil_to_rgb, read_image, try_read_image


def _photo(h: int = 24, w: int = 40, seed: int = 0) -> np.ndarray:
    """A non-symmetric RGB test image (a turned copy never equals the original)."""
    rng = np.random.default_rng(seed)
    a = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    a[:4, :6] = (255, 0, 0)  # a red top-left corner
    return a


def _save(path: Path, im: Image.Image, **kwargs: object) -> Path:
    im.save(path, **kwargs)
    return path


# -- EXIF orientation -----------------------------------------------------------------------------
@pytest.mark.parametrize(("orientation", "expected"), [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),  # stored turned left: shown after a turn right (clockwise)
    (8, lambda a: np.rot90(a, 1)),   # stored turned right: shown after a turn left
    (2, lambda a: a[:, ::-1]),
])
def test_exif_orientation_is_applied_pixel_exact(tmp_path: Path, orientation: int,
                                                 expected: object) -> None:
    a = _photo()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = _save(tmp_path / f"o{orientation}.png", Image.fromarray(a), exif=exif)
    got = read_image(path)
    np.testing.assert_array_equal(got, expected(a))  # type: ignore[operator]
    if orientation in (6, 8):
        assert got.shape == (40, 24, 3)


def test_exif_orientation_of_a_jpeg(tmp_path: Path) -> None:
    a = _photo(32, 48)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "phone.jpg", Image.fromarray(a), exif=exif, quality=95)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))  # the pixels as stored, not turned
    np.testing.assert_array_equal(read_image(path), np.rot90(stored, -1))


@pytest.mark.parametrize("blob", [
    b"Exif\x00\x00garbage!",  # not a TIFF structure: PIL reads no tags
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x09\x00\x00",
])  # the second: orientation 9, which does not exist, in a cut IFD
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_unusable_exif_leaves_the_pixels_as_stored(tmp_path: Path, blob: bytes) -> None:
    a = _photo()
    path = _save(tmp_path / "bad_exif.jpg", Image.fromarray(a), exif=blob)
    with Image.open(path) as im:
        stored = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(read_image(path), stored)


# -- bit depths -----------------------------------------------------------------------------------
def _ramp16() -> np.ndarray:
    return np.arange(65536, dtype=np.uint16).reshape(256, 256)


def test_16bit_gray_png_maps_to_the_nearest_8bit_level(tmp_path: Path) -> None:
    v = _ramp16()
    path = _save(tmp_path / "depth.png", Image.fromarray(v))
    with Image.open(path) as im:
        assert im.mode == "I;16"
        clipped = np.asarray(im.convert("RGB"))[..., 0]
    got = read_image(path)
    assert got.shape == (256, 256, 3) and got.dtype == np.uint8
    assert np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 0], got[..., 2])
    flat = got[..., 0].reshape(-1).astype(int)
    assert np.all(np.diff(flat) >= 0) and flat[0] == 0 and flat[-1] == 255
    np.testing.assert_array_equal(flat, np.round(np.arange(65536) / 257).astype(int))
    np.testing.assert_array_equal(flat[::257], np.arange(256))  # 257 * k -> k
    assert (clipped == 255).mean() > 0.99  # what convert("RGB") would have given


@pytest.mark.parametrize("mode", ["I;16B", "I;16L", "I"])
def test_other_16bit_modes(tmp_path: Path, mode: str) -> None:
    v = _ramp16()[::4, ::4].copy()  # 0, 4, 8, ... 65532 and more rows
    if mode == "I":
        im = Image.fromarray(v.astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        im = Image.frombytes(mode, (v.shape[1], v.shape[0]), v.astype(dtype).tobytes())
    assert im.mode == mode
    path = _save(tmp_path / "depth.tif", im)
    got = read_image(path)[..., 0]
    np.testing.assert_array_equal(got, (v.astype(np.uint32) + 128) // 257)


def test_32bit_int_is_clipped_to_16_bits() -> None:
    v = np.array([[-5, 0, 257, 65535, 70000]], np.int32)
    np.testing.assert_array_equal(pil_to_rgb(Image.fromarray(v))[0, :, 0], [0, 0, 1, 255, 255])


def test_float_images(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.5, 1.0, -0.25, np.nan]], np.float32)
    path = _save(tmp_path / "unit.tif", Image.fromarray(unit))
    np.testing.assert_array_equal(read_image(path)[0, :, 0], [0, 128, 255, 0, 0])
    wide = np.array([[0.0, 250.0, 1000.0]], np.float32)  # above 1: divided by the max
    path = _save(tmp_path / "wide.tif", Image.fromarray(wide))
    np.testing.assert_array_equal(read_image(path)[0, :, 0], [0, 64, 255])


# -- colour modes ---------------------------------------------------------------------------------
def test_gray_and_gray_alpha(tmp_path: Path) -> None:
    g = _photo()[..., 0]
    for mode in ("L", "LA"):
        im = Image.fromarray(g) if mode == "L" else Image.merge(
            "LA", [Image.fromarray(g), Image.fromarray(np.zeros_like(g))])
        got = read_image(_save(tmp_path / f"{mode}.png", im))
        np.testing.assert_array_equal(got, np.repeat(g[:, :, None], 3, axis=2))


def test_cmyk_equals_pils_own_conversion(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cmyk = Image.fromarray((rng.random((20, 30, 4)) * 255).astype(np.uint8), "CMYK")
    for name in ("c.jpg", "c.tif"):
        path = _save(tmp_path / name, cmyk)
        with Image.open(path) as im:
            assert im.mode == "CMYK"
            expected = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(read_image(path), expected)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_images_use_the_palettes_colours(tmp_path: Path, transparent: bool) -> None:
    p = Image.fromarray(_photo()).quantize(16)
    if transparent:
        p.info["transparency"] = 3
    for name in ("p.png", "p.gif"):
        path = _save(tmp_path / name, p)
        with Image.open(path) as im:
            im.load()
            assert im.mode == "P"
            table = np.array(im.getpalette(), np.uint8).reshape(-1, 3)
            expected = table[np.asarray(im)]  # the lookup done by hand; alpha dropped
        np.testing.assert_array_equal(read_image(path), expected)


def test_rgba_drops_alpha_keeping_the_colour_under_it(tmp_path: Path) -> None:
    a = _photo()
    alpha = np.zeros(a.shape[:2], np.uint8)
    alpha[:, ::2] = 255  # half the pixels fully transparent
    path = _save(tmp_path / "rgba.png", Image.fromarray(np.dstack([a, alpha])))
    np.testing.assert_array_equal(read_image(path), a)


def test_bilevel(tmp_path: Path) -> None:
    bits = (_photo()[..., 1] > 127)
    path = _save(tmp_path / "bits.png", Image.fromarray(bits).convert("1"))
    with Image.open(path) as im:
        assert im.mode == "1"
    got = read_image(path)
    np.testing.assert_array_equal(got[..., 0], np.where(bits, 255, 0))


def test_rgb_and_bytes_round_trip(tmp_path: Path) -> None:
    a = _photo()
    path = _save(tmp_path / "rgb.png", Image.fromarray(a))
    np.testing.assert_array_equal(read_image(path), a)
    np.testing.assert_array_equal(read_image(str(path)), a)
    np.testing.assert_array_equal(read_image(path.read_bytes()), a)


def test_animated_gif_gives_its_first_frame(tmp_path: Path) -> None:
    frames = [Image.fromarray(np.full((8, 8, 3), c, np.uint8)) for c in (10, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert int(read_image(path).mean()) == 10


# -- bad files ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "suffix"), [("JPEG", ".jpg"), ("PNG", ".png")])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_files_raise_naming_the_path(tmp_path: Path, fmt: str, suffix: str,
                                               keep: float) -> None:
    buf = io.BytesIO()
    Image.fromarray(_photo(64, 64)).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(DatasetError, match="truncated image") as e:
        read_image(path)
    assert e.value.message.startswith(f"{path}: truncated image")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    image, error = try_read_image(path)
    assert image is None and error == e.value.message


def test_a_text_file_named_jpg_raises(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_text("I am not a photograph\n")
    with pytest.raises(DatasetError, match="not an image") as e:
        read_image(path)
    assert str(path) in e.value.message
    with pytest.raises(DatasetError, match=r"^<6 bytes>: not an image"):
        read_image(b"hello!")


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(DatasetError, match="folder"):
        read_image(tmp_path)


def test_try_read_image_reports_instead_of_raising(tmp_path: Path) -> None:
    a = _photo()
    good = _save(tmp_path / "ok.png", Image.fromarray(a))
    image, error = try_read_image(good)
    assert error is None and np.array_equal(image, a)
    image, error = try_read_image(tmp_path / "missing.png")
    assert image is None and error.startswith(str(tmp_path / "missing.png"))


# -- the decompression-bomb guard -----------------------------------------------------------------
def test_pils_guard_is_lifted_for_the_read_only(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "big.png", Image.fromarray(np.zeros((100, 120, 3), np.uint8)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL itself refuses > 2000 pixels
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert read_image(path).shape == (100, 120, 3)
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored


def test_max_pixels_caps_the_size(tmp_path: Path) -> None:
    path = _save(tmp_path / "big.png", Image.fromarray(np.zeros((100, 120, 3), np.uint8)))
    with pytest.raises(DatasetError, match=r"too large: 120x100 = 12000 pixels"):
        read_image(path, max_pixels=11999)
    assert read_image(path, max_pixels=12000).shape == (100, 120, 3)
    assert read_image(path, max_pixels=None).shape == (100, 120, 3)
    image, error = try_read_image(path, max_pixels=10)
    assert image is None and "too large" in error


def test_predictor_inputs_go_through_read_image(tmp_path: Path) -> None:
    from danlu.infer.predictor import to_rgb_array

    a = _photo()
    exif = Image.Exif()
    exif[0x0112] = 8
    path = _save(tmp_path / "turned.png", Image.fromarray(a), exif=exif)
    np.testing.assert_array_equal(to_rgb_array(path), np.rot90(a, 1))
    np.testing.assert_array_equal(to_rgb_array(path.read_bytes()), np.rot90(a, 1))
