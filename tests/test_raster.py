"""Windowed readers of huge images (danlu.infer.raster) against full decodes.

Oracles: tifffile.imread and PIL's full decode, sliced; for PNG layouts PIL cannot write
(16-bit RGB/RGBA/gray+alpha, low-bit gray, every filter type on purpose, interlacing), a small
PNG encoder below, itself checked against PIL where PIL reads the result.
"""

from __future__ import annotations

import struct
import tracemalloc
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageOps

from danlu.errors import DatasetError
from danlu.infer._png_bands import read_png_header
from danlu.infer.raster import (
    ArrayRaster,
    PngRaster,
    Raster,
    TiffRaster,
    WholeImageRaster,
    open_raster,
)

SIG = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


# ----------------------------------------------------------------------------- test images

def photo(h: int = 301, w: int = 257, seed: int = 0) -> np.ndarray:
    """RGB with smooth gradients, flat areas and noise (so PIL's adaptive filter picks
    every filter type)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(w - 1, 1)), (y * 255 // max(h - 1, 1)),
                    ((x + y) % 256)], axis=-1).astype(np.uint8)
    img[h // 3: 2 * h // 3] = rng.integers(0, 256, (2 * h // 3 - h // 3, w, 3), dtype=np.uint8)
    img[: h // 6, : w // 4] = 77
    return img


def to8(samples: np.ndarray, depth: int) -> np.ndarray:
    """The documented scaling, written independently: ``round(v * 255 / (2**depth - 1))``."""
    return np.rint(samples.astype(np.float64) * 255 / (2 ** depth - 1)).astype(np.uint8)


def expected_rgb(samples: np.ndarray, color_type: int, depth: int,
                 palette: np.ndarray | None = None) -> np.ndarray:
    if color_type == 3:
        table = np.zeros((256, 3), np.uint8)
        table[: len(palette)] = palette
        return table[samples[..., 0]]
    v = to8(samples, depth)
    return np.repeat(v[..., :1], 3, axis=2) if color_type in (0, 4) else v[..., :3].copy()


def _pack(samples: np.ndarray, depth: int) -> np.ndarray:
    """``[H, row_bytes]`` bytes of ``samples [H, W, C]`` at ``depth`` bits per sample."""
    flat = samples.reshape(samples.shape[0], -1)
    if depth == 16:
        return flat.astype(">u2").view(np.uint8)
    if depth == 8:
        return flat.astype(np.uint8)
    per = 8 // depth
    flat = np.pad(flat, ((0, 0), (0, (-flat.shape[1]) % per))).astype(np.uint16)
    shifts = np.arange(8 - depth, -1, -depth)
    return (flat.reshape(flat.shape[0], -1, per) << shifts).sum(axis=2).astype(np.uint8)


def _filter_row(cur: np.ndarray, prev: np.ndarray, bpp: int, kind: int) -> np.ndarray:
    """PNG filter ``kind`` applied to one row (vectorized: filters see unfiltered bytes)."""
    c, b = cur.astype(np.int32), prev.astype(np.int32)
    a = np.concatenate([np.zeros(bpp, np.int32), c[:-bpp]])[: len(c)]
    ul = np.concatenate([np.zeros(bpp, np.int32), b[:-bpp]])[: len(c)]
    if kind == 0:
        pred = np.zeros_like(c)
    elif kind == 1:
        pred = a
    elif kind == 2:
        pred = b
    elif kind == 3:
        pred = (a + b) // 2
    else:
        p = a + b - ul
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - ul)
        pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, ul))
    return ((c - pred) % 256).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(samples: np.ndarray, color_type: int, depth: int, *,
               palette: np.ndarray | None = None, interlace: bool = False, seed: int = 0,
               idat_size: int = 997) -> bytes:
    """A PNG of ``samples [H, W, C]``, each row with a random filter type, in many IDATs."""
    rng = np.random.default_rng(seed)
    h, w = samples.shape[:2]
    samples = samples.reshape(h, w, CHANNELS[color_type])
    bpp = max(1, CHANNELS[color_type] * depth // 8)

    def filtered(img: np.ndarray) -> bytes:
        packed = _pack(img, depth)
        prev, out = np.zeros(packed.shape[1], np.uint8), []
        for row in packed:
            kind = int(rng.integers(0, 5))
            out.append(bytes([kind]) + _filter_row(row, prev, bpp, kind).tobytes())
            prev = row
        return b"".join(out)

    if interlace:
        raw = b"".join(filtered(samples[y0::dy, x0::dx]) for x0, y0, dx, dy in ADAM7
                       if samples[y0::dy, x0::dx].size)
    else:
        raw = filtered(samples)
    z = zlib.compress(raw, 6)
    parts = [SIG, _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0,
                                              int(interlace)))]
    if palette is not None:
        parts.append(_chunk(b"PLTE", palette.astype(np.uint8).tobytes()))
    parts += [_chunk(b"IDAT", z[i:i + idat_size]) for i in range(0, len(z), idat_size)]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def random_windows(w: int, h: int, n: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    rng = np.random.default_rng(seed)
    out = [(0, 0, w, h), (0, 0, 1, 1), (w - 1, h - 1, w, h), (w - 1, 0, w, h), (0, h - 1, w, h)]
    for _ in range(n):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        out.append((x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))))
    return out


def assert_reads(raster: Raster, oracle: np.ndarray, n: int = 25, seed: int = 0) -> None:
    assert (raster.height, raster.width) == oracle.shape[:2]
    for x0, y0, x1, y1 in random_windows(raster.width, raster.height, n, seed):
        got = raster.read(x0, y0, x1, y1)
        assert got.dtype == np.uint8 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, oracle[y0:y1, x0:x1], err_msg=f"{(x0, y0, x1, y1)}")


def pil_oracle(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode.startswith("I;16"):
            return np.repeat(to8(np.asarray(img), 16)[..., None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


# ----------------------------------------------------------------------------- arrays

@pytest.mark.parametrize("kind", ["gray", "rgb", "rgba", "gray1", "u16", "float"])
def test_array_raster_converts_each_layout(kind: str) -> None:
    rgb = photo(40, 30)
    source, expected = {
        "gray": (rgb[..., 0], np.repeat(rgb[..., :1], 3, 2)),
        "gray1": (rgb[..., :1], np.repeat(rgb[..., :1], 3, 2)),
        "rgb": (rgb, rgb),
        "rgba": (np.concatenate([rgb, rgb[..., :1]], 2), rgb),
        "u16": (rgb.astype(np.uint16) * 257, rgb),
        "float": (rgb / 255.0, rgb),
    }[kind]
    with open_raster(source) as r:
        assert isinstance(r, ArrayRaster) and isinstance(r, Raster) and r.windowed
        assert r.path is None and r.geo is None
        assert_reads(r, expected)
        assert not np.shares_memory(r.read(0, 0, 30, 40), source)


def test_uint16_and_float_scaling_rounds() -> None:
    v = np.array([[0, 128, 129, 385, 386, 65535]], np.uint16)
    assert ArrayRaster(v).read(0, 0, 6, 1)[0, :, 0].tolist() == [0, 0, 1, 1, 2, 255]
    f = np.array([[-1.0, 0.0, 0.5, 1.0, 2.0, np.nan]])
    assert ArrayRaster(f).read(0, 0, 6, 1)[0, :, 0].tolist() == [0, 0, 128, 255, 255, 0]


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 5), np.uint8), np.zeros((4, 4), np.int32),
                                 np.zeros((4,), np.uint8), np.zeros((0, 4), np.uint8)])
def test_array_raster_rejects_other_arrays(bad: np.ndarray) -> None:
    with pytest.raises(DatasetError, match="array of"):
        open_raster(bad)


@pytest.mark.parametrize("window", [(0, 0, 0, 5), (3, 0, 2, 5), (-1, 0, 4, 5), (0, 0, 31, 5),
                                    (0, 0, 5, 41), (0, 5, 5, 5), (0.5, 0, 4, 4)])
def test_bad_windows_raise(window: tuple) -> None:
    with pytest.raises(DatasetError, match="window"):
        ArrayRaster(photo(40, 30)).read(*window)


def test_numpy_integer_windows_are_accepted() -> None:
    r = ArrayRaster(photo(40, 30))
    np.testing.assert_array_equal(r.read(*np.array([1, 2, 5, 9])), photo(40, 30)[2:9, 1:5])


# ----------------------------------------------------------------------------- PNG

PIL_MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"]


def pil_png(path: Path, mode: str, optimize: bool) -> Path:
    rgb = photo()
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 251 + rgb[..., 1])
    else:
        img = Image.fromarray(rgb).convert(mode)
    img.save(path, optimize=optimize)
    return path


@pytest.mark.parametrize("optimize", [False, True])
@pytest.mark.parametrize("mode", PIL_MODES)
def test_png_matches_pil(tmp_path: Path, mode: str, optimize: bool) -> None:
    path = pil_png(tmp_path / "a.png", mode, optimize)
    with open_raster(path) as r:
        assert isinstance(r, PngRaster) and r.windowed and r.path == path and r.geo is None
        assert_reads(r, pil_oracle(path))


def _filter_types(path: Path) -> set[int]:
    h = read_png_header(path)
    data = path.read_bytes()
    raw = zlib.decompress(b"".join(data[o:o + n] for o, n in h.idat))
    return set(raw[:: h.row_bytes + 1])


def test_pil_pngs_exercise_every_filter_type(tmp_path: Path) -> None:
    seen: set[int] = set()
    for mode in PIL_MODES:
        for optimize in (False, True):
            seen |= _filter_types(pil_png(tmp_path / f"{mode[0]}{optimize}.png", mode, optimize))
    assert seen == {0, 1, 2, 3, 4}


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_png_palette_with_few_entries(tmp_path: Path, bits: int) -> None:
    colors = {1: 2, 2: 3, 4: 11, 8: 5}[bits]
    img = Image.fromarray(photo() // 128 * 127).convert("P", palette=Image.Palette.ADAPTIVE,
                                                        colors=colors)
    path = tmp_path / "p.png"
    img.save(path, bits=bits, optimize=True)
    h = read_png_header(path)
    assert h.color_type == 3 and h.bit_depth <= bits
    assert read_png_header(path).palette[colors:].max() == 0  # a PLTE of `colors` entries
    with open_raster(path) as r:
        assert_reads(r, pil_oracle(path))


def test_png_palette_index_past_plte_reads_black(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2, 3]], np.uint8)
    path = tmp_path / "p.png"
    path.write_bytes(encode_png(idx[..., None], 3, 8, palette=np.array([[9, 8, 7], [1, 2, 3]])))
    assert open_raster(path).read(0, 0, 4, 1)[0].tolist() == [[9, 8, 7], [1, 2, 3], [0, 0, 0],
                                                                [0, 0, 0]]


COMBOS = [(0, 1), (0, 2), (0, 4), (0, 8), (0, 16), (2, 8), (2, 16), (3, 1), (3, 2), (3, 4),
          (3, 8), (4, 8), (4, 16), (6, 8), (6, 16)]


def _samples(color_type: int, depth: int, h: int = 67, w: int = 53, seed: int = 1):
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, 2 ** depth, (h, w, CHANNELS[color_type])).astype(
        np.uint16 if depth == 16 else np.uint8)
    samples[: h // 3] = samples[:1]  # repeated rows: Up filters of equal rows
    palette = rng.integers(0, 256, (min(2 ** depth, 200), 3)) if color_type == 3 else None
    if palette is not None:
        samples %= len(palette)
    return samples, palette


@pytest.mark.parametrize(("color_type", "depth"), COMBOS)
def test_png_every_colour_type_and_depth(tmp_path: Path, color_type: int, depth: int) -> None:
    samples, palette = _samples(color_type, depth)
    path = tmp_path / "c.png"
    path.write_bytes(encode_png(samples, color_type, depth, palette=palette, seed=depth))
    assert len(read_png_header(path).idat) > 1 or path.stat().st_size < 1100
    expected = expected_rgb(samples, color_type, depth, palette)
    if depth == 8 or color_type in (0, 3) and depth < 16 or (color_type, depth) == (0, 16):
        np.testing.assert_array_equal(pil_oracle(path), expected)  # the encoder, checked
    with open_raster(path) as r:
        assert isinstance(r, PngRaster)
        assert_reads(r, expected, seed=depth)


@pytest.mark.parametrize(("color_type", "depth"), [(2, 8), (0, 16), (3, 4), (0, 1)])
def test_interlaced_png_falls_back_to_a_whole_decode(tmp_path: Path, color_type: int,
                                                     depth: int) -> None:
    samples, palette = _samples(color_type, depth, h=29, w=21)
    path = tmp_path / "i.png"
    path.write_bytes(encode_png(samples, color_type, depth, palette=palette, interlace=True))
    expected = expected_rgb(samples, color_type, depth, palette)
    with open_raster(path) as r:
        assert isinstance(r, WholeImageRaster) and not r.windowed
        assert_reads(r, expected)


def _tall_png(tmp_path: Path, h: int = 1200, w: int = 400) -> tuple[Path, np.ndarray]:
    img = np.random.default_rng(3).integers(0, 256, (h, w, 3), dtype=np.uint8)
    path = tmp_path / "tall.png"
    Image.fromarray(img).save(path)
    return path, img


def test_png_top_band_reads_only_the_top_of_the_stream(tmp_path: Path) -> None:
    path, img = _tall_png(tmp_path)
    total = sum(n for _, n in read_png_header(path).idat)
    with open_raster(path) as r:
        np.testing.assert_array_equal(r.read(10, 0, 300, 16), img[:16, 10:300])
        assert 0 < r.bytes_fed < total / 10


def test_png_row_major_windows_decode_the_file_once(tmp_path: Path) -> None:
    path, img = _tall_png(tmp_path)
    total = sum(n for _, n in read_png_header(path).idat)
    for cache_bytes in (1, 256 << 20):  # a ring of one window's rows is enough
        with open_raster(path, cache_bytes=cache_bytes) as r:
            for y0 in [*range(0, 1100, 80), 1100]:  # 100-row windows overlapping 20 rows
                for x0 in (0, 150, 300):
                    np.testing.assert_array_equal(r.read(x0, y0, x0 + 100, y0 + 100),
                                                  img[y0:y0 + 100, x0:x0 + 100])
            assert r.bytes_fed == total


def test_png_window_above_the_ring_restarts_and_stays_correct(tmp_path: Path) -> None:
    path, img = _tall_png(tmp_path)
    total = sum(n for _, n in read_png_header(path).idat)
    with open_raster(path, cache_bytes=1) as r:
        np.testing.assert_array_equal(r.read(0, 1100, 400, 1200), img[1100:])
        assert r.bytes_fed == total
        np.testing.assert_array_equal(r.read(5, 3, 9, 40), img[3:40, 5:9])
        assert total < r.bytes_fed < total * 1.2


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 52), st.integers(0, 66), st.integers(1, 53),
                          st.integers(1, 67)), min_size=1, max_size=6),
       st.sampled_from([1, 2000, 1 << 20]))
def test_png_any_window_sequence(windows: list, cache_bytes: int) -> None:
    samples, _ = _samples(6, 16, seed=5)
    expected = expected_rgb(samples, 6, 16)
    r = open_raster(_HYPO_PNG, cache_bytes=cache_bytes)
    try:
        for x0, y0, w, h in windows:
            x1, y1 = min(53, x0 + w), min(67, y0 + h)
            np.testing.assert_array_equal(r.read(x0, y0, x1, y1), expected[y0:y1, x0:x1])
    finally:
        r.close()


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_png(tmp_path_factory: pytest.TempPathFactory) -> None:
    global _HYPO_PNG
    samples, _ = _samples(6, 16, seed=5)
    _HYPO_PNG = tmp_path_factory.mktemp("hypo") / "h.png"
    _HYPO_PNG.write_bytes(encode_png(samples, 6, 16, idat_size=301))


_HYPO_PNG: Path


# ----------------------------------------------------------------------------- TIFF

def _tiff_case(name: str) -> tuple[np.ndarray, dict, np.ndarray]:
    """(data written, imwrite options, expected RGB)."""
    rgb = photo()
    rng = np.random.default_rng(7)
    u16 = rng.integers(0, 65536, rgb.shape, dtype=np.uint16)
    gray = rgb[..., 1]
    alpha = rng.integers(0, 256, gray.shape, dtype=np.uint8)
    cmap = rng.integers(0, 65536, (3, 256), dtype=np.uint16)
    return {
        "rgb8": (rgb, {}, rgb),
        "rgb16": (u16, {"predictor": True}, to8(u16, 16)),
        "gray8": (gray, {}, np.repeat(gray[..., None], 3, 2)),
        "gray16": (u16[..., 0], {}, np.repeat(to8(u16[..., :1], 16), 3, 2)),
        "gray_alpha": (np.stack([gray, alpha], -1), {"photometric": "minisblack",
                                                     "extrasamples": ["unassalpha"]},
                       np.repeat(gray[..., None], 3, 2)),
        "rgba": (np.concatenate([rgb, alpha[..., None]], 2), {"extrasamples": ["unassalpha"]},
                 rgb),
        "palette": (gray, {"photometric": "palette", "colormap": cmap}, to8(cmap.T, 16)[gray]),
        "miniswhite": (gray, {"photometric": "miniswhite"},
                       np.repeat(255 - gray[..., None], 3, 2)),
        "planar": (rgb.transpose(2, 0, 1).copy(), {"photometric": "rgb",
                                                   "planarconfig": "separate"}, rgb),
        "planar_rgba16": (np.concatenate([u16, u16[..., :1]], 2).transpose(2, 0, 1).copy(),
                          {"photometric": "rgb", "planarconfig": "separate",
                           "extrasamples": ["unassalpha"]}, to8(u16, 16)),
    }[name]


TIFF_KINDS = ["rgb8", "rgb16", "gray8", "gray16", "gray_alpha", "rgba", "palette", "miniswhite",
              "planar", "planar_rgba16"]
LAYOUTS = {"tiled": {"tile": (64, 48)}, "striped": {"rowsperstrip": 13},
           "one_strip": {"rowsperstrip": 301}}


TIFF_CASES = [(kind, layout, compression) for kind in TIFF_KINDS for layout in LAYOUTS
              for compression in (None, "zlib")]
TIFF_CASES += [(kind, layout, "lzma") for kind in ("rgb8", "planar_rgba16") for layout in LAYOUTS]


@pytest.mark.parametrize(("kind", "layout", "compression"), TIFF_CASES)
def test_tiff_matches_tifffile(tmp_path: Path, kind: str, layout: str,
                               compression: str | None) -> None:
    data, options, expected = _tiff_case(kind)
    if compression is None:
        options.pop("predictor", None)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data, compression=compression, **LAYOUTS[layout], **options)
    np.testing.assert_array_equal(tifffile.imread(path), data)  # the oracle reads it back
    with open_raster(path) as r:
        assert isinstance(r, TiffRaster) and r.path == path and r.geo is None
        assert r.windowed == (layout != "one_strip")
        assert_reads(r, expected, n=15)


def test_tiff_window_decodes_only_the_tiles_it_meets(tmp_path: Path) -> None:
    data, _, expected = _tiff_case("rgb8")  # 301 x 257, tiles 64 x 48: 5 rows x 6 columns
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, tile=(64, 48), compression="zlib")
    with open_raster(path) as r:
        np.testing.assert_array_equal(r.read(50, 70, 100, 130), expected[70:130, 50:100])
        assert r.segments_decoded == 2 * 2  # rows 64-127 and 128-191, columns 48-95, 96-143
        r.read(60, 80, 90, 120)  # inside the same tiles: cached
        assert r.segments_decoded == 4
        r.read(256, 300, 257, 301)  # the last, partial tile
        assert r.segments_decoded == 5
    with open_raster(path, cache_bytes=0) as r:
        r.read(50, 70, 100, 130)
        r.read(50, 70, 100, 130)
        assert r.segments_decoded == 8  # nothing cached


def test_tiff_strips_decode_only_the_strips_a_window_meets(tmp_path: Path) -> None:
    data, options, expected = _tiff_case("planar")
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, data, rowsperstrip=10, **options)
    with open_raster(path) as r:
        np.testing.assert_array_equal(r.read(0, 25, 257, 41), expected[25:41])
        assert r.segments_decoded == 3 * 3  # strips 20-29, 30-39, 40-49 of each of R, G, B


def test_tiff_row_major_windows_decode_each_tile_once(tmp_path: Path) -> None:
    data, _, expected = _tiff_case("rgb16")
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib", predictor=True)
    with open_raster(path) as r:
        for y0 in (0, 80, 160, 237):
            for x0 in (0, 80, 160, 193):
                np.testing.assert_array_equal(r.read(x0, y0, x0 + 64, y0 + 64),
                                              expected[y0:y0 + 64, x0:x0 + 64])
        assert r.segments_decoded == 10 * 9  # every tile of the 301 x 257 image, once


@pytest.mark.parametrize("kind", ["rgb16", "planar", "gray8"])
def test_uncompressed_single_strip_is_read_by_row_blocks(tmp_path: Path, kind: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from danlu.infer import _tiff_windows

    monkeypatch.setattr(_tiff_windows, "_RAW_CELL_BYTES", 3000)
    data, options, expected = _tiff_case(kind)
    options.pop("predictor", None)
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, data, rowsperstrip=301, **options)  # one strip
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages[0].dataoffsets) == (3 if kind == "planar" else 1)
    with open_raster(path) as r:
        assert r.windowed
        spp = 3 if kind == "rgb16" else 1  # samples per pixel of one plane
        rows = max(1, 3000 // (257 * spp * data.itemsize))  # rows per block
        np.testing.assert_array_equal(r.read(5, 40, 100, 40 + 3 * rows),
                                      expected[40:40 + 3 * rows, 5:100])
        blocks = 3 if 40 % rows == 0 else 4
        assert r.segments_decoded == blocks * (3 if kind == "planar" else 1)
        assert_reads(r, expected, n=10)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["tiled", "striped", "planar", "raw"]), st.integers(0, 256),
       st.integers(0, 300), st.integers(1, 257), st.integers(1, 301))
def test_tiff_any_window(layout: str, x0: int, y0: int, w: int, h: int) -> None:
    path, expected = _HYPO_TIFFS[layout]
    x1, y1 = min(257, x0 + w), min(301, y0 + h)
    with open_raster(path, cache_bytes=50_000) as r:
        np.testing.assert_array_equal(r.read(x0, y0, x1, y1), expected[y0:y1, x0:x1])


@pytest.fixture(scope="module", autouse=True)
def _hypothesis_tiffs(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("hypo_tiff")
    for layout, kind, opts in [("tiled", "rgb16", {"tile": (32, 48), "compression": "zlib"}),
                               ("striped", "palette", {"rowsperstrip": 7, "compression": "zlib"}),
                               ("planar", "planar", {"tile": (16, 16), "compression": "zlib"}),
                               ("raw", "planar_rgba16", {"rowsperstrip": 9})]:
        data, options, expected = _tiff_case(kind)
        tifffile.imwrite(tmp / f"{layout}.tif", data, **opts, **options)
        _HYPO_TIFFS[layout] = (tmp / f"{layout}.tif", expected)


_HYPO_TIFFS: dict[str, tuple[Path, np.ndarray]] = {}


@pytest.mark.parametrize("compression", ["packbits", "tiff_deflate", "tiff_lzw", "jpeg"])
def test_pil_written_tiffs(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "p.tif"
    Image.fromarray(photo()).save(path, compression=compression)
    with open_raster(path) as r:
        # tifffile decodes packbits and deflate itself; LZW and JPEG need imagecodecs, else PIL
        windowed = compression in ("packbits", "tiff_deflate")
        assert isinstance(r, TiffRaster if windowed else WholeImageRaster)
        assert_reads(r, pil_oracle(path), n=10)


def test_tiff_float_falls_back_to_pil(tmp_path: Path) -> None:
    data = (photo()[..., 0] / 255.0).astype(np.float32)
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, data)
    with open_raster(path) as r:
        assert isinstance(r, WholeImageRaster) and not r.windowed
        assert_reads(r, np.repeat(photo()[..., :1], 3, 2), n=5)


def test_tiff_with_many_bands_raises(tmp_path: Path) -> None:
    path = tmp_path / "ms.tif"
    tifffile.imwrite(path, np.zeros((20, 30, 6), np.uint8), photometric="minisblack",
                     planarconfig="contig")
    with pytest.raises(DatasetError, match=r"ms\.tif.*6 samples per pixel"):
        open_raster(path)


def _read_concurrently(r: Raster, windows: list, expected: np.ndarray, ahead: int = 8) -> None:
    """Read ``windows`` with 4 threads, at most ``ahead`` in flight (as sliced inference does:
    a new window is submitted when the oldest one's result is taken)."""
    with ThreadPoolExecutor(4) as pool:
        pending = [(w, pool.submit(r.read, *w)) for w in windows[:ahead]]
        rest = iter(windows[ahead:])
        while pending:
            (x0, y0, x1, y1), fut = pending.pop(0)
            np.testing.assert_array_equal(fut.result(), expected[y0:y1, x0:x1])
            nxt = next(rest, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(r.read, *nxt)))


def _row_major(w: int, h: int, size: int, step: int) -> list[tuple[int, int, int, int]]:
    xs = [*range(0, w - size, step), w - size]
    ys = [*range(0, h - size, step), h - size]
    return [(x, y, x + size, y + size) for y in ys for x in xs]


def test_threads_share_a_tiff_reader_and_decode_each_tile_once(tmp_path: Path) -> None:
    data, options, expected = _tiff_case("rgb16")
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, tile=(32, 32), compression="zlib", **options)
    with open_raster(path) as r:
        _read_concurrently(r, _row_major(257, 301, 48, 40) * 2, expected)
        assert r.segments_decoded == 10 * 9


def test_threads_share_a_png_reader_without_restarts(tmp_path: Path) -> None:
    path, img = _tall_png(tmp_path)
    total = sum(n for _, n in read_png_header(path).idat)
    # 8 windows in flight reach at most 2 rows of windows back: 160 + 96 rows < a ring of 300
    with open_raster(path, cache_bytes=300 * 400 * 3) as r:
        _read_concurrently(r, _row_major(400, 1200, 96, 80), img)
        assert r.bytes_fed == total


# ----------------------------------------------------------------------------- memory

def _pattern(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """A compressible RGB pattern of rows ``y0:y1``, columns ``x0:x1`` of the big image."""
    y = (np.arange(y0, y1) // 8)[:, None]
    x = (np.arange(x0, x1) // 8)[None, :]
    return np.stack(np.broadcast_arrays(x % 256, y % 256, (x ^ y) % 256), -1).astype(np.uint8)


def _tiles(n: int, tile: int):
    for ty in range(-(-n // tile)):
        for tx in range(-(-n // tile)):
            yield _pattern(ty * tile, (ty + 1) * tile, tx * tile, (tx + 1) * tile)


def test_tiled_tiff_row_major_reads_stay_far_below_the_image_size(tmp_path: Path) -> None:
    n, tile, win = 6000, 256, 512
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, _tiles(n, tile), shape=(n, n, 3), dtype=np.uint8,
                     tile=(tile, tile), compression="zlib", compressionargs={"level": 1})
    full = n * n * 3
    tracemalloc.start()
    try:
        with open_raster(path, cache_bytes=16 << 20) as r:
            checked = 0
            for y0 in list(range(0, n - win, 410)) + [n - win]:
                for x0 in list(range(0, n - win, 410)) + [n - win]:
                    out = r.read(x0, y0, x0 + win, y0 + win)
                    if (x0 + y0) % 7 == 0:
                        assert np.array_equal(out, _pattern(y0, y0 + win, x0, x0 + win))
                        checked += 1
            decodes = r.segments_decoded
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert checked > 10
    assert peak < full / 4, f"peak {peak / 1e6:.1f} MB for a {full / 1e6:.0f} MB image"
    assert decodes == (-(-n // tile)) ** 2  # a row of windows' tiles fits: each decoded once


def test_png_row_major_reads_stay_far_below_the_image_size(tmp_path: Path) -> None:
    h, w, win = 3000, 3000, 256
    path = tmp_path / "big.png"
    z, body = zlib.compressobj(1), []
    for y in range(h):
        row = ((np.arange(w * 3) + y) % 256).astype(np.uint8)
        body.append(z.compress(b"\x00" + row.tobytes()))
    data = b"".join(body) + z.flush()
    path.write_bytes(SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + b"".join(_chunk(b"IDAT", data[i:i + 8192])
                                for i in range(0, len(data), 8192)) + _chunk(b"IEND", b""))
    del data, body
    full = h * w * 3
    tracemalloc.start()
    try:
        with open_raster(path, cache_bytes=1) as r:
            for y0 in range(0, h - win, 200):
                for x0 in range(0, w - win, 600):
                    out = r.read(x0, y0, x0 + win, y0 + win)
                    assert out[0, 0, 0] == (x0 * 3 + y0) % 256
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < full / 4, f"peak {peak / 1e6:.1f} MB for a {full / 1e6:.0f} MB image"


# ----------------------------------------------------------------------------- other images

def test_jpeg_is_decoded_whole_with_exif_orientation(tmp_path: Path) -> None:
    img = Image.fromarray(photo(60, 90))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "a.jpg"
    img.save(path, exif=exif, quality=95)
    with open_raster(path) as r:
        assert isinstance(r, WholeImageRaster) and not r.windowed
        assert (r.width, r.height) == (60, 90)
        with Image.open(path) as im:
            expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
        assert_reads(r, expected, n=5)
    with pytest.raises(DatasetError, match="after close"):
        r.read(0, 0, 1, 1)


@pytest.mark.parametrize("fmt", ["BMP", "WEBP", "GIF"])
def test_other_formats_through_pil(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"a.{fmt.lower()}"
    Image.fromarray(photo(50, 40)).save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    with open_raster(path) as r:
        assert isinstance(r, WholeImageRaster)
        assert_reads(r, pil_oracle(path), n=5)


def test_decompression_bomb_guard_is_lifted_only_inside(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.jpg"
    Image.fromarray(photo(200, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    with open_raster(path) as r:
        assert (r.width, r.height) == (200, 200)
    assert Image.MAX_IMAGE_PIXELS == 1000


# ----------------------------------------------------------------------------- bad input

def test_truncated_png_raises_naming_the_file(tmp_path: Path) -> None:
    path, _ = _tall_png(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cut\.png.*truncated"):
        open_raster(cut)


def test_png_whose_image_data_ends_early_raises_on_read(tmp_path: Path) -> None:
    samples, _ = _samples(2, 8)
    data = encode_png(samples, 2, 8, idat_size=10 ** 6)
    z = zlib.compress(b"".join(bytes([0]) + row.tobytes() for row in samples[:30]))
    short = tmp_path / "short.png"
    short.write_bytes(SIG + data[8:33] + _chunk(b"IDAT", z) + _chunk(b"IEND", b""))
    with open_raster(short) as r:
        np.testing.assert_array_equal(r.read(0, 0, 53, 20), samples[:20])
        with pytest.raises(DatasetError, match=r"short\.png.*ends before row 30"):
            r.read(0, 20, 53, 67)


def test_corrupt_png_data_and_filter_raise(tmp_path: Path) -> None:
    samples, _ = _samples(0, 8)
    raw = bytearray(b"".join(bytes([1]) + row.tobytes() for row in samples[..., 0]))
    raw[5 * 54] = 9  # row 5's filter byte
    bad = tmp_path / "filter.png"
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", 53, 67, 8, 0, 0, 0, 0))
    bad.write_bytes(SIG + ihdr + _chunk(b"IDAT", zlib.compress(bytes(raw)))
                    + _chunk(b"IEND", b""))
    with pytest.raises(DatasetError, match=r"filter\.png.*row 5 has filter type 9"):
        open_raster(bad).read(0, 0, 53, 67)
    garbage = tmp_path / "zlib.png"
    garbage.write_bytes(SIG + ihdr + _chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 50)
                        + _chunk(b"IEND", b""))
    with pytest.raises(DatasetError, match=r"zlib\.png.*corrupt image data"):
        open_raster(garbage).read(0, 0, 5, 5)


def test_png_header_errors(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    cases = {
        "crc": SIG + _chunk(b"IHDR", ihdr)[:-1] + b"\x00" + _chunk(b"IEND", b""),
        "depth": SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 4, 2, 0, 0, 0)),
        "noidat": SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""),
        "noplte": SIG + _chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 3, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 20)) + _chunk(b"IEND", b""),
        "noiend": SIG + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 52)),
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(data)
        with pytest.raises(DatasetError, match=rf"{name}\.png"):
            open_raster(path)


def test_truncated_tiff_raises_naming_the_file(tmp_path: Path) -> None:
    data, _, _ = _tiff_case("rgb8")
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib")
    full = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full[: len(full) * 2 // 3])
    with pytest.raises(DatasetError, match=r"cut\.tif.*truncated"):
        open_raster(cut)
    tiny = tmp_path / "tiny.tif"
    tiny.write_bytes(full[:12])
    with pytest.raises(DatasetError, match=r"tiny\.tif"):
        open_raster(tiny)


def test_corrupt_tiff_tile_raises_on_read(tmp_path: Path) -> None:
    data, _, _ = _tiff_case("rgb8")
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[0].dataoffsets[0]
    raw = bytearray(path.read_bytes())
    raw[offset: offset + 40] = b"\xff" * 40
    path.write_bytes(bytes(raw))
    with open_raster(path) as r:
        r.read(200, 200, 257, 301)  # other tiles are fine
        with pytest.raises(DatasetError, match=r"bad\.tif.*tile 0"):
            r.read(0, 0, 10, 10)


def test_non_images_raise(tmp_path: Path) -> None:
    text = tmp_path / "notes.png.txt"
    text.write_text("not an image")
    with pytest.raises(DatasetError, match=r"notes\.png\.txt.*not an image"):
        open_raster(text)
    with pytest.raises(DatasetError, match=r"missing\.tif"):
        open_raster(tmp_path / "missing.tif")
    with pytest.raises(DatasetError, match="cannot open"):
        open_raster(tmp_path)


def test_reads_after_close_raise(tmp_path: Path) -> None:
    png, _ = _tall_png(tmp_path, 20, 20)
    tif = tmp_path / "a.tif"
    tifffile.imwrite(tif, photo(), tile=(64, 64))
    for path in (png, tif):
        r = open_raster(path)
        r.close()
        with pytest.raises(DatasetError, match="after close"):
            r.read(0, 0, 2, 2)
