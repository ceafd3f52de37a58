"""Sliced inference: tiling, the cut-box rule, the merge, and sameness with a plain tile loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from _data_fixtures import train_tiny_checkpoint
from danlu.infer.postprocess import PostProcess
from danlu.infer.predictor import Predictor
from danlu.infer.slicing import (
    SliceStats,
    auto_slice_size,
    cut_sides,
    resolve_cut_boxes,
    slice_windows,
    sliced_predict,
)
from danlu.structures import Detections


@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(16, 1024),
       st.floats(0.0, 0.6))
@settings(max_examples=80, deadline=None)
def test_windows_cover_the_image_inside_its_bounds(w, h, size, overlap):
    wins = slice_windows(w, h, size, overlap)
    cover = np.zeros((min(h, 64), min(w, 64)), bool)  # a coarse check on a grid of points
    ys = np.linspace(0, h - 1, cover.shape[0]).astype(int)
    xs = np.linspace(0, w - 1, cover.shape[1]).astype(int)
    for x0, y0, x1, y1 in wins:
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 == min(size, w) and y1 - y0 == min(size, h)
        cover |= ((ys[:, None] >= y0) & (ys[:, None] < y1) & (xs[None] >= x0) & (xs[None] < x1))
    assert cover.all()
    # row-major: y never decreases
    assert all(a[1] <= b[1] for a, b in zip(wins, wins[1:], strict=False))
    # neighbours share at least the asked overlap
    stride = max(1, size - round(size * overlap))
    xs0 = sorted({x0 for x0, *_ in wins})
    assert all(b - a <= stride for a, b in zip(xs0, xs0[1:], strict=False))


def test_auto_slice_size():
    assert auto_slice_size(256, 300, 200) == 300  # within 1.5x: one tile
    assert auto_slice_size(256, 5000, 200) == 256
    assert auto_slice_size(None, 5000, 5000) == 1024


def test_cut_sides_ignore_the_image_border():
    det = Detections([[0, 0, 10, 10], [100, 5, 120, 20], [50, 50, 60, 60]], [0, 0, 0],
                     scores=[1, 1, 1])
    # tile (0, 0, 120, 120) of a 500x500 image: its right and bottom sides are interior
    assert cut_sides(det, (0, 0, 120, 120), 500, 500, 2.0).tolist() == [False, True, False]
    # the same tile as the whole image: nothing is cut
    assert not cut_sides(det, (0, 0, 120, 120), 120, 120, 2.0).any()


def test_a_cut_piece_goes_when_another_tile_holds_the_whole_object():
    whole = [200, 40, 230, 70]
    piece = [200, 40, 212, 70]  # the same object cut by a tile's right side at x=212
    other = [400, 400, 430, 430]  # a cut box nothing contains: stays
    det = Detections([whole, piece, other], [1, 1, 1], scores=[0.8, 0.9, 0.7])
    out, dropped, merged = resolve_cut_boxes(det, np.array([False, True, True]))
    assert dropped == 1 and merged == 0
    assert sorted(map(tuple, out.xyxy.tolist())) == [tuple(map(float, whole)),
                                                     tuple(map(float, other))]
    # another class does not contain it
    det2 = Detections([whole, piece], [1, 2], scores=[0.8, 0.9])
    assert len(resolve_cut_boxes(det2, np.array([False, True]))[0]) == 2


def test_pieces_of_an_object_cut_in_every_tile_merge_into_its_box():
    # tiles [0, 300) and [240, 540): an object from 200 to 330 is cut in both
    left = [200, 10, 300, 50]
    right = [240, 10, 330, 50]
    det = Detections([left, right], [0, 0], scores=[0.6, 0.9])
    out, dropped, merged = resolve_cut_boxes(det, np.array([True, True]))
    assert (dropped, merged) == (0, 1)
    assert out.xyxy.tolist() == [[200.0, 10.0, 330.0, 50.0]] and out.scores.tolist() == [
        pytest.approx(0.9)]


class _Blobs:
    """A perfect detector: every connected non-black region of the image is one object of
    class 0, scored 0.9, boxed tight (so a tile sees a cut object as a cut box)."""

    class_names = ["blob"]
    transform = None
    default_iou = None
    default_max_detections = None
    device = torch.device("cpu")

    def candidates(self, images, score_threshold):
        out = []
        for im in images:
            labels, n = ndimage.label(im.max(axis=2) > 0)
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop]
                     for s in ndimage.find_objects(labels)]
            out.append(Detections(np.asarray(boxes, np.float32).reshape(-1, 4),
                                  np.zeros(n, np.int64), scores=np.full(n, 0.9, np.float32)))
        return out


def _scene(rng, w, h, n, lo, hi):
    img = np.zeros((h, w, 3), np.uint8)
    boxes = []
    taken = np.zeros((h, w), bool)
    while len(boxes) < n:
        bw, bh = rng.integers(lo, hi, 2)
        x, y = rng.integers(0, w - bw), rng.integers(0, h - bh)
        if taken[max(0, y - 3):y + bh + 3, max(0, x - 3):x + bw + 3].any():
            continue
        taken[y:y + bh, x:x + bw] = True
        img[y:y + bh, x:x + bw] = rng.integers(60, 255, 3)
        boxes.append([x, y, x + bw, y + bh])
    return img, np.asarray(boxes, np.float32)


def _matched(found, truth):
    iou = torchvision.ops.box_iou(torch.from_numpy(found), torch.from_numpy(truth)).numpy()
    return iou


@pytest.mark.parametrize("lo,hi", [(6, 30), (60, 110)])
def test_one_object_gives_one_box_across_tile_seams(lo, hi):
    """Small objects (inside some tile whole) and large ones (larger than the overlap, cut in
    every tile): with the perfect detector, sliced prediction returns exactly the objects."""
    rng = np.random.default_rng(lo)
    img, truth = _scene(rng, 900, 700, 25, lo, hi)
    p = Predictor(_Blobs(), score_threshold=0.1, nms="hard", iou=0.5)
    stats = SliceStats()
    det = sliced_predict(p, img, slice_size=200, overlap=0.25, stats=stats)
    assert stats.tiles == len(slice_windows(900, 700, 200, 0.25)) and stats.tiles > 12
    assert len(det) == len(truth), (len(det), len(truth), stats)
    iou = _matched(det.xyxy, truth)
    assert (iou.max(axis=0) > 0.999).all()
    # without the cut-box rule, the seams leave pieces behind
    naive = sliced_predict(p, img, slice_size=200, overlap=0.25, resolve_cuts=False)
    assert len(naive) > len(truth)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A detector trained for one epoch on small shapes: real, non-degenerate boxes."""
    ckpt = train_tiny_checkpoint(tmp_path_factory.mktemp("slicing"), img_size=96)
    return Predictor(ckpt, device="cpu", score_threshold=0.05, batch_size=4)


def _texture(seed, w, h):
    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=1, seed=seed, image_size=(w, h),
                    scale_range=(12, 28), objects_per_image=(20, 40), encode=False)
    return ds[0].load_image()


def test_plain_map_back_and_merge_equals_a_loop_over_the_tiles_with_torchvision(tiny):
    """resolve_cuts=False is the DOTA devkit's merge: each tile predicted, shifted, and all of
    them through class-aware NMS. The oracle is a loop of Predictor.predict over crops and
    torchvision.ops.batched_nms."""
    img = _texture(1, 400, 300)
    got = sliced_predict(tiny, img, slice_size=96, overlap=0.2, resolve_cuts=False,
                         merge=PostProcess("hard", iou_threshold=0.5, max_detections=0))
    parts = []
    for x0, y0, x1, y1 in slice_windows(400, 300, 96, 0.2):
        d = tiny.predict(np.ascontiguousarray(img[y0:y1, x0:x1]))
        parts.append(d.translate(x0, y0))
    allb = Detections.concat(parts)
    keep = torchvision.ops.batched_nms(torch.from_numpy(allb.xyxy), torch.from_numpy(allb.scores),
                                       torch.from_numpy(allb.labels), 0.5).numpy()
    want = allb[keep]
    assert len(got) == len(want) > 0

    def rows(d):  # equal scores may come in either order
        return np.round(d.xyxy[np.lexsort(d.xyxy.T[::-1])], 3)

    np.testing.assert_allclose(rows(got), rows(want), atol=1e-3)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)


def test_the_same_boxes_at_batch_1_and_batch_16_and_with_reader_threads(tiny):
    img = _texture(2, 500, 420)
    a = sliced_predict(tiny, img, slice_size=96, overlap=0.2, batch_size=1, workers=0)
    b = sliced_predict(tiny, img, slice_size=96, overlap=0.2, batch_size=16, workers=2)
    assert len(a) == len(b) > 0
    iou = _matched(a.xyxy, b.xyxy)
    assert (iou.max(axis=1) >= 0.99).all()
    np.testing.assert_allclose(np.sort(a.scores), np.sort(b.scores), atol=1e-5)


def test_full_pass_finds_an_object_larger_than_the_tiles():
    rng = np.random.default_rng(5)
    img, truth = _scene(rng, 800, 800, 1, 500, 520)
    p = Predictor(_Blobs(), score_threshold=0.1)
    det = sliced_predict(p, img, slice_size=200, overlap=0.2, full_pass=True)
    assert (_matched(det.xyxy, truth).max(axis=0) > 0.98).all()


def test_an_image_smaller_than_a_tile_is_one_tile(tiny):
    img = _texture(3, 90, 80)
    stats = SliceStats()
    det = sliced_predict(tiny, img, slice_size=96, stats=stats)
    assert stats.tiles == 1
    want = tiny.predict(img)
    assert len(det) == len(want)


def test_tta_applies_to_every_tile(tiny):
    from danlu.infer.predictor import Predictor as P

    img = _texture(6, 200, 150)
    tta = P(tiny.checkpoint_path, device="cpu", score_threshold=0.05, tta=True)
    got = sliced_predict(tta, img, slice_size=96, overlap=0.2, resolve_cuts=False,
                         merge=PostProcess("hard", iou_threshold=0.5, max_detections=0))
    parts = [tta.predict(np.ascontiguousarray(img[y0:y1, x0:x1])).translate(x0, y0)
             for x0, y0, x1, y1 in slice_windows(200, 150, 96, 0.2)]
    want = PostProcess("hard", iou_threshold=0.5, max_detections=0)(Detections.concat(parts))
    assert len(got) == len(want) > 0

    def rows(d):  # equal scores may come in either order
        return np.round(d.xyxy[np.lexsort(d.xyxy.T[::-1])], 3)

    # tiles batched vs one by one differ by ~1e-6, which rounding can show as 0.001
    np.testing.assert_allclose(rows(got), rows(want), atol=2e-3)
