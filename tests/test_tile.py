"""Tiling against the DOTA_devkit ImgSplit definition, with shapely as the clipping oracle."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import Polygon, box

from danlu.data.tile import clip_polygon_to_rect, tile_dataset, tile_origins, untile_detections
from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample


def devkit_origins(width, height, subsize, gap):
    """The tile loop of DOTA_devkit's ImgSplit.SplitSingle, as documented there."""
    slide = subsize - gap
    out = []
    left = 0
    while left < width:
        if left + subsize >= width:
            left = max(width - subsize, 0)
        up = 0
        while up < height:
            if up + subsize >= height:
                up = max(height - subsize, 0)
            out.append((left, up))
            if up + subsize >= height:
                break
            up += slide
        if left + subsize >= width:
            break
        left += slide
    return out


@settings(max_examples=150, deadline=None)
@given(w=st.integers(1, 3000), h=st.integers(1, 3000), size=st.integers(48, 1200),
       gap_frac=st.floats(0, 0.95))
def test_origins_match_devkit_and_cover_the_image(w, h, size, gap_frac):
    gap = int(size * gap_frac)
    origins = tile_origins(w, h, size, gap)
    assert origins == devkit_origins(w, h, size, gap)
    xs = sorted({x for x, _ in origins})
    ys = sorted({y for _, y in origins})
    # consecutive tiles overlap or touch: every column / row is covered
    assert xs[0] == 0 and ys[0] == 0
    assert all(b <= a + size for a, b in zip(xs, xs[1:], strict=False))
    assert xs[-1] + size >= w and ys[-1] + size >= h
    assert all(x + size <= max(w, size) for x in xs)  # the last tile is shifted inside


def test_origins_hand_case_and_bad_args():
    assert tile_origins(2000, 1100, 1024, 200) == [
        (0, 0), (0, 76), (824, 0), (824, 76), (976, 0), (976, 76)]
    assert tile_origins(500, 300, 1024, 200) == [(0, 0)]
    assert tile_origins(1024, 1024, 1024, 200) == [(0, 0)]
    with pytest.raises(ConfigError):
        tile_origins(10, 10, 8, 8)


def _rot_rect(cx, cy, w, h, a):
    c, s = np.cos(a), np.sin(a)
    local = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return local @ np.array([[c, s], [-s, c]]) + [cx, cy]


@settings(max_examples=200, deadline=None)
@given(cx=st.floats(-20, 120), cy=st.floats(-20, 120), w=st.floats(1, 80), h=st.floats(1, 80),
       a=st.floats(0, np.pi), rect=st.tuples(st.floats(0, 50), st.floats(0, 50),
                                             st.floats(5, 60), st.floats(5, 60)))
def test_clip_matches_shapely(cx, cy, w, h, a, rect):
    poly = _rot_rect(cx, cy, w, h, a)
    x1, y1, rw, rh = rect
    ours = clip_polygon_to_rect(poly, x1, y1, x1 + rw, y1 + rh)
    ref = Polygon(poly).intersection(box(x1, y1, x1 + rw, y1 + rh))
    ours_area = Polygon(ours).area if len(ours) >= 3 else 0.0
    assert ours_area == pytest.approx(ref.area, abs=1e-6 * max(1.0, w * h))
    if ref.area > 1e-3 and len(ours) >= 3:
        assert shapely.symmetric_difference(Polygon(ours), ref).area < 1e-6 * max(1.0, w * h)


def reference_tile(polys, labels, x, y, size, thresh):
    """Per object: None (not in tile), 'keep' or 'partial', with the shapely intersection."""
    tile = box(x, y, x + size, y + size)
    out = []
    for p in polys:
        g = Polygon(p)
        inter = g.intersection(tile)
        f = inter.area / g.area
        out.append(None if f <= 0 else ("keep" if f >= thresh else "partial", inter))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), drop=st.booleans())
def test_tile_dataset_matches_shapely_reference(seed, drop):
    rng = np.random.default_rng(seed)
    W, H, size, gap = 150, 110, 64, 16
    n = 6
    polys = np.stack([_rot_rect(rng.uniform(0, W), rng.uniform(0, H), rng.uniform(4, 40),
                                rng.uniform(4, 40), rng.uniform(0, np.pi)) for _ in range(n)])
    labels = rng.integers(0, 3, n)
    det = Detections(None, labels, polygons=polys.astype(np.float32),
                     flags={"difficult": np.zeros(n, bool)})
    img = rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
    ds = Dataset([Sample(img, W, H, det, id="P1")], ["a", "b", "c"])
    tiles = tile_dataset(ds, size, gap, keep_partial="drop" if drop else "difficult")
    assert [(t.meta["tile"]["x"], t.meta["tile"]["y"]) for t in tiles] == tile_origins(W, H,
                                                                                        size, gap)
    p32 = det.polygons.astype(np.float64)
    for t in tiles:
        x, y = t.meta["tile"]["x"], t.meta["tile"]["y"]
        assert t.id == f"P1__1__{x}___{y}"
        assert np.array_equal(t.image, img[y:y + size, x:x + size])
        ref = reference_tile(p32, labels, x, y, size, 0.7)
        expected = [(i, r[0]) for i, r in enumerate(ref)
                    if r is not None and not (drop and r[0] == "partial")]
        d = t.detections
        assert d.labels.tolist() == [labels[i] for i, _ in expected]
        assert d.flags["difficult"].tolist() == [k == "partial" for _, k in expected]
        assert (d.polygons >= 0).all() and (d.polygons <= size).all()
        for j, (i, _) in enumerate(expected):
            inter = ref[i][1]
            ours = Polygon(d.polygons[j] + [x, y])
            if len(inter.exterior.coords) - 1 == 4:  # a quadrilateral stays exact
                assert ours.area == pytest.approx(inter.area, rel=1e-4, abs=1e-3)
                assert shapely.symmetric_difference(ours, inter).area < 1e-3 * max(inter.area, 1)
            # xyxy is the enclosing box of the stored polygon
            assert np.allclose(d.xyxy[j], [*d.polygons[j].min(0), *d.polygons[j].max(0)])


@settings(max_examples=50, deadline=None)
@given(w=st.integers(20, 300), h=st.integers(20, 300), size=st.integers(16, 128),
       gap=st.integers(0, 15), seed=st.integers(0, 1000))
def test_every_object_centre_lies_in_some_tile(w, h, size, gap, seed):
    rng = np.random.default_rng(seed)
    c = rng.uniform(0, [w, h], (20, 2))
    origins = np.array(tile_origins(w, h, size, gap))
    inside = ((c[:, None, :] >= origins[None]) & (c[:, None, :] <= origins[None] + size)).all(-1)
    assert inside.any(1).all()


def test_axis_aligned_boxes_hand_case_and_padding():
    img = np.full((100, 150, 3), 7, np.uint8)
    det = Detections(np.array([[50, 10, 70, 30], [50, 40, 80, 60], [130, 90, 150, 100]]),
                     [0, 1, 0])
    tiles = tile_dataset(Dataset([Sample(img, 150, 100, det, id="a")], ["car", "bus"]), 64, 16)
    first = tiles[0]  # tile (0, 0): box 0 keeps 14/20, box 1 keeps 14/30
    assert first.detections.xyxy.tolist() == [[50, 10, 64, 30], [50, 40, 64, 60]]
    assert first.detections.flags["difficult"].tolist() == [False, True]
    last = tiles[-1]  # (86, 36)
    assert last.meta["tile"] == {"x": 86, "y": 36, "rate": 1.0, "source": "a",
                                 "source_width": 150, "source_height": 100}
    assert last.detections.xyxy.tolist() == [[44, 54, 64, 64]]
    small = tile_dataset(Dataset([Sample(img[:40, :50], 50, 40, det[:1], id="s")], ["car"]),
                         64, 16, encode=True)
    assert len(small) == 1 and (small[0].width, small[0].height) == (64, 64)
    tile_img = small[0].load_image()
    assert tile_img.shape == (64, 64, 3)
    assert (tile_img[:40, :50] == 7).all() and (tile_img[40:] == 0).all()
    assert (tile_img[:, 50:] == 0).all()


def test_rate_and_untile():
    img = np.zeros((200, 300, 3), np.uint8)
    det = Detections(np.array([[140, 50, 170, 90]]), [0])
    tiles = tile_dataset(Dataset([Sample(img, 300, 200, det, id="r")], ["x"]), 64, 0, rate=0.5)
    assert tiles[0].meta["tile"]["rate"] == 0.5
    assert tiles[0].id == "r__0.5__0___0"
    assert len(tiles) == len(tile_origins(150, 100, 64, 0))
    found = [untile_detections(t.detections, t.meta["tile"]) for t in tiles if len(t.detections)
             and not t.detections.flags["difficult"].any()]
    assert any(np.allclose(d.xyxy, [[140, 50, 170, 90]]) for d in found)


def test_five_vertex_clip_follows_the_devkit_rule():
    # a diamond cut by the tile's right edge x=64 yields 5 vertices before reduction
    poly = np.array([[[50, 20], [70, 30], [60, 50], [40, 40]]], np.float32)
    det = Detections(None, [0], polygons=poly)
    tiles = tile_dataset(Dataset([Sample(np.zeros((64, 64, 3), np.uint8), 64, 64, det,
                                         id="d")], ["x"]), 64, 0)
    clipped = clip_polygon_to_rect(poly[0], 0, 0, 64, 64)
    assert len(clipped) == 5
    edges = np.linalg.norm(np.roll(clipped, -1, 0) - clipped, axis=1)
    k = int(np.argmin(edges))
    expected = np.delete(clipped, (k + 1) % 5, axis=0)
    expected[k if (k + 1) % 5 else k - 1] = (clipped[k] + clipped[(k + 1) % 5]) / 2
    got = tiles[0].detections.polygons[0].astype(np.float64)
    assert {tuple(np.round(p, 4)) for p in got} == {tuple(np.round(p, 4)) for p in expected}
    assert np.allclose(got[0], [50, 20])  # the order best matching the original
