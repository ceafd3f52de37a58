"""Box-aware augmentation, checked against references computed here on fixed cases.

Kornia 0.9's own box transforms (AugmentationSequential with ``bbox_xyxy``) disagree with
these references: flips give ``x1' = W - 1 - x2`` (one pixel off for continuous xyxy boxes), a
90-degree rotation is one pixel off, scaling is ``(s - 1) / 2`` pixels off (it turns about the
pixel-index centre ``(W - 1) / 2``), and boxes are neither clipped nor dropped. danlu therefore
moves boxes with its own continuous-coordinate matrices and uses Kornia only to resample.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.augment import (
    DetectionAugment,
    adjust_color,
    affine_matrices,
    apply_matrices,
    clip_and_filter,
    color_jitter,
    crop_matrices,
    hflip,
    mosaic,
    mosaic_layout,
    random_affine,
    random_resized_crop,
    transform_boxes,
    vflip,
    warp_images,
)

H, W = 40, 60


def _images(b: int = 2, h: int = H, w: int = W, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[5.0, 4.0, 25.0, 30.0], [30.0, 10.0, 58.0, 38.0]]),
         "labels": torch.tensor([1, 2]), "iscrowd": torch.tensor([False, True]),
         "image_id": torch.tensor(7)},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
         "iscrowd": torch.zeros(0, dtype=torch.bool), "image_id": torch.tensor(8)},
    ]


# -- flips -------------------------------------------------------------------------------------
def test_hflip_reference() -> None:
    x, t = _images(), _targets()
    y, t2 = hflip(x, t)
    assert torch.equal(y, x.flip(-1))
    b = t[0]["boxes"]
    ref = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], dim=1)
    assert torch.equal(t2[0]["boxes"], ref)
    assert t2[0]["labels"].tolist() == [1, 2] and t2[0]["iscrowd"].tolist() == [False, True]
    assert t2[1]["boxes"].shape == (0, 4) and int(t2[1]["image_id"]) == 8
    assert t[0]["boxes"] is b  # inputs untouched


def test_vflip_reference_and_selection() -> None:
    x, t = _images(), _targets()
    y, t2 = vflip(x, t, which=torch.tensor([True, False]))
    assert torch.equal(y[0], x[0].flip(-2)) and torch.equal(y[1], x[1])
    b = t[0]["boxes"]
    ref = torch.stack([b[:, 0], H - b[:, 3], b[:, 2], H - b[:, 1]], dim=1)
    assert torch.equal(t2[0]["boxes"], ref)


@pytest.mark.parametrize("backend", ["torch", "kornia"])
def test_warped_flip_matches_exact_flip(backend: str) -> None:
    """The half-pixel convention: a flip matrix warped equals torch.flip."""
    x = _images()
    m = affine_matrices((H, W), hflip=torch.tensor([True, False]),
                        vflip=torch.tensor([False, True]))
    y = warp_images(x, m, backend=backend)
    assert torch.allclose(y[0], x[0].flip(-1), atol=1e-4)
    assert torch.allclose(y[1], x[1].flip(-2), atol=1e-4)


def test_pipeline_flip_only_is_exact() -> None:
    x, t = _images(8), _targets() * 4
    aug = DetectionAugment(hflip=0.5)
    y, t2 = aug(x, t, generator=torch.Generator().manual_seed(3))
    for i in range(8):
        flipped = torch.equal(y[i], x[i].flip(-1))
        assert flipped or torch.equal(y[i], x[i])
        if len(t[i]["boxes"]):
            b = t[i]["boxes"]
            ref = torch.stack([W - b[:, 2], b[:, 1], W - b[:, 0], b[:, 3]], 1) if flipped else b
            assert torch.equal(t2[i]["boxes"], ref)


# -- affine --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "kornia"])
def test_rotation_by_90_degrees(backend: str) -> None:
    """A square image turned 90 degrees counter-clockwise: box (x1, y1, x2, y2) becomes
    (y1, S - x2, y2, S - x1) and the pixels are torch.rot90."""
    s = 32
    x = _images(1, s, s)
    m = affine_matrices((s, s), angle=torch.tensor([90.0]))
    box = torch.tensor([[3.0, 5.0, 11.0, 20.0]])
    got = transform_boxes(box, m[0])
    assert torch.allclose(got, torch.tensor([[5.0, s - 11.0, 20.0, s - 3.0]]), atol=1e-4)
    y = warp_images(x, m, backend=backend)
    assert torch.allclose(y, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4)


def test_scale_about_the_centre_and_translate() -> None:
    m = affine_matrices((H, W), scale=torch.tensor([2.0]), translate=torch.tensor([[3.0, -2.0]]))
    box = torch.tensor([[20.0, 15.0, 30.0, 25.0]])
    c = torch.tensor([W / 2, H / 2, W / 2, H / 2])
    ref = c + 2.0 * (box - c) + torch.tensor([3.0, -2.0, 3.0, -2.0])
    assert torch.allclose(transform_boxes(box, m[0]), ref)
    # the image: the pixel at the centre stays, a pixel 1 px right of it moves 2 px
    x = torch.zeros(1, 1, H, W)
    x[0, 0, 20, 31] = 1.0  # centre (continuous) 31.5, 20.5 -> offset (1.5, 0.5) from (30, 20)
    y = warp_images(x, affine_matrices((H, W), scale=torch.tensor([2.0])))
    cy, cx = divmod(int(torch.argmax(y[0, 0])), W)
    assert (cx + 0.5, cy + 0.5) in {(33.5, 21.5), (32.5, 21.5), (33.5, 20.5), (32.5, 20.5)}


def test_torch_and_kornia_warps_agree() -> None:
    x = _images(4)
    g = torch.Generator().manual_seed(0)
    from danlu.augment import random_affine_matrices

    m = random_affine_matrices(4, (H, W), hflip=0.5, degrees=30, scale=(0.7, 1.3),
                               translate=0.2, generator=g)
    for fill in (0.0, 0.5):
        a = warp_images(x, m, fill=fill)
        b = warp_images(x, m, fill=fill, backend="kornia")
        assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError):
        warp_images(x, m, backend="opencv")


def test_crop_matrix_maps_crop_to_output() -> None:
    crop = torch.tensor([[10.0, 5.0, 40.0, 25.0]])  # 30 x 20 -> output 60 x 40 (x2)
    m = crop_matrices(crop, (40, 60))
    box = torch.tensor([[15.0, 10.0, 20.0, 20.0]])
    assert torch.allclose(transform_boxes(box, m[0]), torch.tensor([[10.0, 10.0, 20.0, 30.0]]))
    x = _images(1)
    y, t2 = apply_matrices(x, [{"boxes": box, "labels": torch.tensor([4])}], m, (40, 60))
    ref = torch.nn.functional.interpolate(x[:, :, 5:25, 10:40], size=(40, 60), mode="bilinear",
                                          align_corners=False)
    assert torch.allclose(y[:, :, 2:-2, 2:-2], ref[:, :, 2:-2, 2:-2], atol=1e-4)
    assert t2[0]["labels"].tolist() == [4]


def test_clip_and_filter() -> None:
    boxes = torch.tensor([[-10.0, 0.0, 10.0, 10.0],   # half inside
                          [-30.0, 0.0, 10.0, 10.0],   # a quarter inside
                          [50.0, 30.0, 70.0, 50.0],   # quarter inside
                          [5.0, 5.0, 6.0, 20.0],      # 1 px wide
                          [70.0, 0.0, 80.0, 10.0],    # outside
                          [10.0, 10.0, 10.0, 20.0]])  # degenerate
    clipped, keep = clip_and_filter(boxes, (0, 0, W, H), min_visibility=0.3, min_size=2)
    assert keep.tolist() == [True, False, False, False, False, False]
    assert clipped[0].tolist() == [0.0, 0.0, 10.0, 10.0]
    assert clipped[2].tolist() == [50.0, 30.0, 60.0, 40.0]
    _, keep = clip_and_filter(boxes, (0, 0, W, H), min_visibility=0.25, min_size=1)
    assert keep.tolist() == [True, True, True, True, False, False]


def test_boxes_leaving_the_image_are_dropped_with_their_values() -> None:
    x, t = _images(), _targets()
    m = affine_matrices((H, W), translate=torch.tensor([[-25.0, 0.0], [0.0, 0.0]]))
    _, t2 = apply_matrices(x, t, m)
    # box 0 (x 5..25) moves to -20..0: gone; box 1 (30..58) to 5..33: kept
    assert t2[0]["boxes"].tolist() == [[5.0, 10.0, 33.0, 38.0]]
    assert t2[0]["labels"].tolist() == [2] and t2[0]["iscrowd"].tolist() == [True]
    assert int(t2[0]["image_id"]) == 7


def test_polygons_move_exactly() -> None:
    s = 32
    poly = torch.tensor([[[4.0, 2.0], [12.0, 6.0], [10.0, 12.0], [2.0, 8.0]]])
    t = [{"boxes": torch.tensor([[2.0, 2.0, 12.0, 12.0]]), "labels": torch.tensor([0]),
          "polygons": poly}]
    m = affine_matrices((s, s), angle=torch.tensor([90.0]))
    _, t2 = apply_matrices(_images(1, s, s), t, m)
    ref = torch.stack([poly[..., 1], s - poly[..., 0]], dim=-1)
    assert torch.allclose(t2[0]["polygons"], ref, atol=1e-4)
    assert torch.allclose(t2[0]["boxes"], torch.cat([ref.amin(1), ref.amax(1)], 1), atol=1e-4)


def test_random_affine_and_crop_shapes() -> None:
    g = torch.Generator().manual_seed(1)
    x, t = _images(), _targets()
    y, t2 = random_affine(x, t, hflip=0.5, degrees=20, scale=(0.8, 1.2), translate=0.1,
                          generator=g)
    assert y.shape == x.shape and len(t2) == 2
    y, t2 = random_resized_crop(x, t, (24, 32), scale=(0.3, 0.9), generator=g)
    assert y.shape == (2, 3, 24, 32)
    for d in t2:
        b = d["boxes"]
        assert ((b[:, 0] >= 0) & (b[:, 2] <= 32) & (b[:, 1] >= 0) & (b[:, 3] <= 24)).all()


# -- colour --------------------------------------------------------------------------------------
@pytest.mark.parametrize("factor", [0.5, 1.4])
def test_single_colour_ops_match_torchvision(factor: float) -> None:
    x = _images(3)
    f = torch.full((3,), factor)
    for name, ref_fn in (("brightness", TF.adjust_brightness), ("contrast", TF.adjust_contrast),
                         ("saturation", TF.adjust_saturation)):
        ours = adjust_color(x, **{name: f})
        ref = torch.stack([ref_fn(xi, factor) for xi in x])
        assert torch.allclose(ours, ref, atol=1e-4), name


def test_hue() -> None:
    x = _images(2)
    assert torch.allclose(adjust_color(x, hue=torch.zeros(2)), x, atol=1e-5)
    # a third of a turn permutes the channels, exactly as an HSV hue shift does
    third = adjust_color(x, hue=torch.full((2,), 1 / 3))
    ref = torch.stack([TF.adjust_hue(xi, 1 / 3) for xi in x])
    assert torch.allclose(third, ref, atol=1e-4)
    gray = torch.full((1, 3, 4, 4), 0.3)
    assert torch.allclose(adjust_color(gray, hue=torch.tensor([0.2])), gray, atol=1e-6)
    # small shifts move towards torchvision's result
    small = adjust_color(x, hue=torch.full((2,), 0.05))
    ref = torch.stack([TF.adjust_hue(xi, 0.05) for xi in x])
    assert (small - ref).abs().mean() < (x - ref).abs().mean()


def test_color_jitter_probability_and_range() -> None:
    x = _images(4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(color_jitter(x, p=0.0, generator=g), x.clamp(0, 1))
    y = color_jitter(x, brightness=0.5, contrast=0.5, saturation=0.5, hue=0.1, generator=g)
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)
    with pytest.raises(ValueError):
        adjust_color(torch.rand(1, 1, 4, 4), brightness=torch.ones(1))


# -- mosaic --------------------------------------------------------------------------------------
def test_mosaic_layout_tiles_and_boxes() -> None:
    b, h, w = 4, 40, 60
    x = torch.stack([torch.full((3, h, w), i / 4) for i in range(b)])
    full = [{"boxes": torch.tensor([[0.0, 0.0, w, h]]), "labels": torch.tensor([i])}
            for i in range(b)]
    y, t2 = mosaic(x, full, generator=torch.Generator().manual_seed(0), min_size=0,
                   min_visibility=0.0)
    for i in range(b):
        boxes, labels = t2[i]["boxes"], t2[i]["labels"]
        assert len(boxes) == 4 and labels[0] == i  # the image itself is the first tile
        # the full-image boxes become the tiles: they tile the canvas exactly
        assert math.isclose(float(((boxes[:, 2:] - boxes[:, :2]).prod(1)).sum()), w * h,
                            rel_tol=1e-5)
        for box, label in zip(boxes, labels, strict=True):
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            if x2 - x1 > 2 and y2 - y1 > 2:
                inner = y[i, :, y1 + 1:y2 - 1, x1 + 1:x2 - 1]
                assert torch.allclose(inner, torch.full_like(inner, int(label) / 4), atol=1e-4)
    m, regions = mosaic_layout(torch.tensor([[30.0, 20.0]]), (h, w))
    assert regions[:, 0].tolist() == [[0, 0, 30, 20], [30, 0, 60, 20], [0, 20, 30, 40],
                                      [30, 20, 60, 40]]
    # top-left tile: the source's bottom-right corner sits on the centre
    corner = transform_boxes(torch.tensor([[0.0, 0.0, w, h]]), m[0, 0])
    assert torch.allclose(corner[0, 2:], torch.tensor([30.0, 20.0]))


def test_mosaic_probability_zero_keeps_images() -> None:
    x, t = _images(), _targets()
    y, t2 = mosaic(x, t, p=0.0)
    assert torch.equal(y, x) and torch.equal(t2[0]["boxes"], t[0]["boxes"])


# -- the pipeline --------------------------------------------------------------------------------
def test_pipeline_is_differentiable() -> None:
    x = _images(4).requires_grad_(True)
    aug = DetectionAugment(hflip=0.5, degrees=10, scale=(0.8, 1.2), translate=0.1,
                           brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, mosaic=0.5,
                           crop_scale=(0.5, 1.0), size=(32, 48))
    y, _ = aug(x, _targets() * 2, generator=torch.Generator().manual_seed(0))
    (y * torch.rand_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_pipeline_is_reproducible_with_a_generator() -> None:
    x, t = _images(4), _targets() * 2
    aug = DetectionAugment.preset("default")
    a = aug(x, t, generator=torch.Generator().manual_seed(5))
    b = aug(x, t, generator=torch.Generator().manual_seed(5))
    c = aug(x, t, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])
    for ta, tb in zip(a[1], b[1], strict=True):
        assert torch.equal(ta["boxes"], tb["boxes"])


def test_pipeline_config_and_presets() -> None:
    aug = DetectionAugment.preset("light", vflip=0.1)
    again = DetectionAugment(**aug.config)
    assert again.config == aug.config and aug.vflip == 0.1
    from danlu.errors import ConfigError

    with pytest.raises(ConfigError):
        DetectionAugment.preset("extreme")
    with pytest.raises(ValueError):
        aug(torch.rand(3, 8, 8), [{}])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), degrees=st.floats(0, 45), mosaic_p=st.floats(0, 1),
       crop=st.booleans())
def test_pipeline_boxes_stay_valid(seed: int, degrees: float, mosaic_p: float,
                                   crop: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    n = 6
    xy = torch.rand(n, 5, 2, generator=g) * torch.tensor([W - 10, H - 10])
    wh = torch.rand(n, 5, 2, generator=g) * 30 + 2
    targets = [{"boxes": torch.cat([xy[i], (xy[i] + wh[i]).clamp(max=torch.tensor([W, H]))], 1),
                "labels": torch.arange(5) + 10 * i, "flag": torch.arange(5) % 2 == 0}
               for i in range(n)]
    aug = DetectionAugment(hflip=0.5, vflip=0.5, degrees=degrees, scale=(0.5, 1.5),
                           translate=0.2, mosaic=mosaic_p, min_size=2.0, min_visibility=0.3,
                           crop_scale=(0.3, 1.0) if crop else None, size=(36, 48))
    y, out = aug(torch.rand(n, 3, H, W, generator=g), targets, generator=g)
    assert y.shape == (n, 3, 36, 48)
    for t in out:
        b = t["boxes"]
        assert len(b) == len(t["labels"]) == len(t["flag"])
        assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= 48) & (b[:, 3] <= 36)).all()
        assert ((b[:, 2:] - b[:, :2]) >= 2.0 - 1e-4).all()
        # flags follow their labels (label % 10 even <=> flag)
        assert torch.equal(t["flag"], (t["labels"] % 10) % 2 == 0)
