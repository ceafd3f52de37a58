"""Synthetic detection datasets: a copy-paste scene generator with built-in presets.

Each image is a background onto which object crops are pasted with an alpha mask, after a
random scale, rotation and (optional) colour jitter. The ground-truth box of an object is the
tight box of its pasted mask (alpha >= 0.5), so boxes are exact by construction.

Presets (nothing needs to be on disk):

* ``"shapes"``: saturated circles, squares, triangles and stars (classes ``circle``,
  ``square``, ``triangle``, ``star``) on low-saturation textured backgrounds (smooth noise,
  gradients, stripes);
* ``"digits"``: the 8x8 handwritten digits that scikit-learn ships
  (:func:`sklearn.datasets.load_digits`, classes ``"0"`` ... ``"9"``), upscaled, pasted in a
  colour that contrasts with the background, on crops of the photographs bundled in
  scikit-image's wheel (astronaut, coffee, chelsea, rocket, hubble_deep_field,
  immunohistochemistry). Needs ``scikit-learn`` and ``scikit-image``.

Randomness: image ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so the same seed
gives the same images byte for byte, and a larger ``num_images`` extends a smaller run.

Example:
    >>> ds = synthesize("shapes", num_images=2, seed=0, image_size=(64, 64),
    ...                 objects_per_image=(1, 2), scale_range=(16, 24))
    >>> len(ds), ds.class_names
    (2, ['circle', 'square', 'triangle', 'star'])
    >>> img = ds[0].load_image(); img.shape, img.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample

SHAPE_CLASSES = ["circle", "square", "triangle", "star"]
DIGIT_CLASSES = [str(i) for i in range(10)]
PRESETS = ("shapes", "digits")
_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
           "immunohistochemistry")
_SUPERSAMPLE = 4


@dataclass
class _Object:
    """An object crop: ``rgb`` HxWx3 uint8 and ``alpha`` HxW float32 in [0, 1]."""

    rgb: np.ndarray
    alpha: np.ndarray
    label: int


# -- backgrounds ------------------------------------------------------------------------------
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One HSV colour (all in [0, 1]) to an RGB float array in [0, 255]."""
    i = int(h * 6.0) % 6
    f = h * 6.0 - int(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.array(rgb, np.float64) * 255.0


def _dull_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.75))


def _shapes_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-saturation texture: smooth noise, a linear gradient or stripes, plus fine noise."""
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    c1, c2 = _dull_colour(rng), _dull_colour(rng)
    if kind == 0:  # smooth noise: a coarse random grid upsampled bicubically
        cells = int(rng.integers(3, 9))
        coarse = (rng.random((cells, cells)) * 255).astype(np.uint8)
        t = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float64) / 255
    elif kind == 1:  # linear gradient at a random angle
        a = rng.uniform(0, 2 * np.pi)
        proj = xx * np.cos(a) + yy * np.sin(a)
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1e-9)
    else:  # sinusoidal stripes
        a = rng.uniform(0, np.pi)
        period = rng.uniform(8, 48)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period)
    img = c1 + (c2 - c1) * t[..., None]
    img += rng.normal(0, 6, (h, w, 1))
    return img


@lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    try:
        import skimage.data
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError("the 'digits' preset needs scikit-image",
                          hint="pip install scikit-image scikit-learn") from e
    out = []
    for name in _PHOTOS:
        im = np.asarray(getattr(skimage.data, name)())
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        out.append(np.ascontiguousarray(im[..., :3]))
    return tuple(out)


def _photo_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A random crop (at least half the photo's shorter side) of a bundled photo, resized."""
    photos = _photos()
    photo = photos[int(rng.integers(len(photos)))]
    ph, pw = photo.shape[:2]
    aspect = w / h
    side = rng.uniform(0.5, 1.0) * min(ph, pw / aspect)
    cw, ch = max(int(side * aspect), 1), max(int(side), 1)
    x0, y0 = int(rng.integers(pw - cw + 1)), int(rng.integers(ph - ch + 1))
    crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw])
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop.resize((w, h), Image.BILINEAR), np.float64)


# -- objects ----------------------------------------------------------------------------------
def _shape_mask(label: int, size: int) -> np.ndarray:
    """Antialiased alpha ``[size, size]`` of a shape filling the canvas (supersampled)."""
    s = size * _SUPERSAMPLE
    m = Image.new("L", (s, s), 0)
    d = ImageDraw.Draw(m)
    c, r = s / 2, s / 2 - 0.5
    name = SHAPE_CLASSES[label]
    if name == "circle":
        d.ellipse([0, 0, s - 1, s - 1], fill=255)
    elif name == "square":
        d.rectangle([0, 0, s - 1, s - 1], fill=255)
    elif name == "triangle":
        ang = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        pts = np.stack([c + r * np.cos(ang), c + r * np.sin(ang)], 1)
        pts[:, 1] += (s - pts[:, 1].min() - pts[:, 1].max()) / 2  # centre vertically
        d.polygon([tuple(p) for p in pts], fill=255)
    else:  # five-pointed star
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        pts = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1)
        d.polygon([tuple(p) for p in pts], fill=255)
    m = m.resize((size, size), Image.BOX)
    return np.asarray(m, np.float32) / 255.0


def _shape_object(rng: np.random.Generator, size: int) -> _Object:
    label = int(rng.integers(len(SHAPE_CLASSES)))
    colour = _hsv_to_rgb(rng.random(), rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    alpha = _shape_mask(label, size)
    rgb = np.broadcast_to(np.round(colour).astype(np.uint8), (size, size, 3))
    return _Object(np.ascontiguousarray(rgb), alpha, label)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 8x8 digits (values scaled to [0, 1]) and their labels, as scikit-learn ships
    them; read from its bundled CSV directly, which avoids importing scikit-learn (slow)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the 'digits' preset needs scikit-learn",
                          hint="pip install scikit-learn scikit-image")
    csv = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if csv.is_file():
        data = np.loadtxt(csv, delimiter=",", dtype=np.float32)
        images, targets = data[:, :-1].reshape(-1, 8, 8), data[:, -1]
    else:  # pragma: no cover - a future layout: ask scikit-learn
        from sklearn.datasets import load_digits

        d = load_digits()
        images, targets = d.images, d.target
    return (np.asarray(images, np.float32) / 16.0,
            np.asarray(targets).astype(np.int64))


def _digit_object(rng: np.random.Generator, size: int) -> _Object:
    images, targets = _digits()
    k = int(rng.integers(len(images)))
    # pad by one pixel so the upscaled stroke fades out inside the canvas
    small = np.pad(images[k], 1)
    alpha = np.asarray(Image.fromarray(small, mode="F").resize((size, size), Image.BICUBIC))
    alpha = np.clip((alpha - 0.15) * 1.6, 0.0, 1.0).astype(np.float32)
    rgb = np.zeros((size, size, 3), np.uint8)  # coloured when pasted (contrast with background)
    return _Object(rgb, alpha, int(targets[k]))


def _transform(obj: _Object, angle: float, rng: np.random.Generator,
               jitter: float) -> _Object:
    """Rotate by ``angle`` degrees (canvas expanded) and jitter brightness and saturation."""
    rgb, alpha = obj.rgb, obj.alpha
    if angle:
        fill = tuple(int(v) for v in rgb.reshape(-1, 3).mean(0))
        rgb = np.asarray(Image.fromarray(rgb).rotate(angle, Image.BICUBIC, expand=True,
                                                     fillcolor=fill))
        a = Image.fromarray(alpha, mode="F").rotate(angle, Image.BILINEAR, expand=True)
        alpha = np.clip(np.asarray(a), 0, 1).astype(np.float32)
    if jitter > 0:
        f = rgb.astype(np.float64)
        grey = f.mean(axis=2, keepdims=True)
        sat = 1 + rng.uniform(-jitter, jitter)
        bright = 1 + rng.uniform(-jitter, jitter)
        rgb = np.clip(np.round((grey + (f - grey) * sat) * bright), 0, 255).astype(np.uint8)
    return _Object(np.ascontiguousarray(rgb), alpha, obj.label)


def _tight_box(alpha: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight ``xyxy`` (continuous, exclusive end) of ``alpha >= 0.5`` in the crop."""
    mask = alpha >= 0.5
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if len(cols) == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _overlap(box: np.ndarray, boxes: list[np.ndarray]) -> float:
    """Max over ``boxes`` of max(IoU, intersection / smaller area) with ``box``."""
    if not boxes:
        return 0.0
    from danlu.boxes.iou import box_ios, box_iou

    one, b = np.asarray(box, np.float64)[None], np.asarray(boxes, np.float64)
    return float(np.max(np.maximum(box_iou(one, b), box_ios(one, b))))


# -- the generator ----------------------------------------------------------------------------
_Maker = Callable[[np.random.Generator, int], _Object]
_Background = Callable[[np.random.Generator, int, int], np.ndarray]


def _preset(preset: str) -> tuple[list[str], _Background, _Maker, float]:
    if preset == "shapes":
        return SHAPE_CLASSES, _shapes_background, _shape_object, 180.0
    if preset == "digits":
        return DIGIT_CLASSES, _photo_background, _digit_object, 15.0
    raise ConfigError(f"unknown synth preset {preset!r}", hint="choose one of: "
                      + ", ".join(PRESETS))


def synthesize_image(
    preset: str = "shapes",
    seed: int = 0,
    index: int = 0,
    *,
    image_size: tuple[int, int] = (256, 256),
    objects_per_image: tuple[int, int] = (1, 6),
    scale_range: tuple[int, int] = (16, 80),
    rotation: float | None = None,
    color_jitter: float = 0.15,
    max_overlap: float = 0.0,
    max_tries: int = 50,
) -> tuple[np.ndarray, Detections]:
    """Generate image ``index`` of the stream ``seed``: ``(HxWx3 uint8 image, Detections)``.

    See :func:`synthesize` for the arguments. Example:
        >>> img, det = synthesize_image("shapes", seed=1, index=0, image_size=(96, 64),
        ...                             scale_range=(12, 32))
        >>> img.shape, 1 <= len(det) <= 6
        ((64, 96, 3), True)
    """
    class_names, background, make, default_rotation = _preset(preset)
    w, h = int(image_size[0]), int(image_size[1])
    lo, hi = int(scale_range[0]), int(scale_range[1])
    if not (0 < lo <= hi) or hi > min(w, h):
        raise ConfigError(f"scale_range {scale_range} must satisfy 0 < min <= max <= "
                          f"min(image_size) = {min(w, h)}")
    nmin, nmax = int(objects_per_image[0]), int(objects_per_image[1])
    if not 0 <= nmin <= nmax:
        raise ConfigError(f"objects_per_image {objects_per_image} must satisfy 0 <= min <= max")
    max_angle = default_rotation if rotation is None else float(rotation)
    rng = np.random.default_rng([int(seed), int(index)])
    canvas = background(rng, w, h)
    n = int(rng.integers(nmin, nmax + 1))
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(n):
        size = int(rng.integers(lo, hi + 1))
        angle = float(rng.uniform(-max_angle, max_angle)) if max_angle else 0.0
        obj = _transform(make(rng, size), angle, rng, color_jitter)
        tight = _tight_box(obj.alpha)
        if tight is None:
            continue
        tx1, ty1, tx2, ty2 = tight
        if tx2 - tx1 > w or ty2 - ty1 > h:  # rotated canvas too big for the image
            continue
        for _try in range(max_tries):
            x = int(rng.integers(-tx1, w - tx2 + 1))
            y = int(rng.integers(-ty1, h - ty2 + 1))
            box = np.array([x + tx1, y + ty1, x + tx2, y + ty2], np.float64)
            if _overlap(box, boxes) <= max_overlap:
                break
        else:
            continue
        _paste(canvas, obj, x, y, rng, preset)
        boxes.append(box)
        labels.append(obj.label)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    det = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64))
    return image, det


def _paste(canvas: np.ndarray, obj: _Object, x: int, y: int, rng: np.random.Generator,
           preset: str) -> None:
    """Alpha-composite ``obj`` onto ``canvas`` (float HxWx3) with its top-left at ``(x, y)``."""
    h, w = canvas.shape[:2]
    oh, ow = obj.alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + ow, w), min(y + oh, h)
    region = canvas[y0:y1, x0:x1]
    a = obj.alpha[y0 - y:y1 - y, x0 - x:x1 - x, None].astype(np.float64)
    if preset == "digits":  # a colour that contrasts with what lies under the stroke
        under = (region * a).sum((0, 1)) / max(float(a.sum()), 1e-9)
        lum = float(under @ np.array([0.299, 0.587, 0.114]))
        v = rng.uniform(0.0, 0.15) if lum > 110 else rng.uniform(0.9, 1.0)
        rgb = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.6), v)[None, None, :]
    else:
        rgb = obj.rgb[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float64)
    region *= 1 - a
    region += rgb * a


def encode_png(image: np.ndarray) -> bytes:
    """Encode an ``HxWx3`` uint8 array as PNG bytes (deterministic for the same array)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def synthesize(
    preset: str = "shapes",
    num_images: int = 100,
    seed: int = 0,
    *,
    image_size: tuple[int, int] = (256, 256),
    objects_per_image: tuple[int, int] = (1, 6),
    scale_range: tuple[int, int] = (16, 80),
    rotation: float | None = None,
    color_jitter: float = 0.15,
    max_overlap: float = 0.0,
    encode: bool = True,
    progress: Callable[[range], object] | None = None,
) -> Dataset:
    """Generate a synthetic detection dataset by pasting objects onto backgrounds.

    Args:
        preset: ``"shapes"`` or ``"digits"`` (see the module docstring).
        num_images: number of images.
        seed: the random stream; the same seed gives identical images and boxes.
        image_size: ``(width, height)`` in pixels.
        objects_per_image: inclusive ``(min, max)`` number of objects tried per image; fewer
            are placed when no free spot is found in 50 tries.
        scale_range: inclusive ``(min, max)`` side in pixels of an object's square canvas
            before rotation (the shape fills the canvas; a digit fills most of it).
        rotation: maximum absolute rotation in degrees, uniform in ``[-rotation, rotation]``;
            None uses the preset's default (180 for shapes, 15 for digits, where 6 and 9
            must stay apart).
        color_jitter: relative brightness and saturation jitter of each object (0 = none).
        max_overlap: the largest allowed max(IoU, intersection over the smaller box) between
            the box of a new object and any earlier one; 0 means objects never overlap.
            A later object is drawn over earlier ones; boxes stay the full pasted mask.
        encode: store images as PNG bytes in ``Sample.image`` (True) or as ``HxWx3`` uint8
            arrays (False).
        progress: optional wrapper around the image index iterator (e.g. a progress bar).

    Returns:
        A :class:`Dataset` with ids ``"{preset}_{index:06d}"``; boxes are the tight boxes
        of the pasted masks (alpha >= 0.5), in ``xyxy`` pixels; ``meta["synth"]`` records
        the arguments.

    Example:
        >>> ds = synthesize("shapes", num_images=3, seed=7, image_size=(64, 64),
        ...                 scale_range=(12, 20), encode=False)
        >>> [s.id for s in ds]
        ['shapes_000000', 'shapes_000001', 'shapes_000002']
        >>> bool((ds[0].detections.xyxy[:, 2:] <= 64).all())
        True
    """
    class_names = _preset(preset)[0]
    if num_images < 0:
        raise ConfigError(f"num_images must be >= 0, got {num_images}")
    indices: range = range(int(num_images))
    it = progress(indices) if progress is not None else indices
    samples = []
    for i in it:  # type: ignore[attr-defined]
        img, det = synthesize_image(preset, seed, i, image_size=image_size,
                                    objects_per_image=objects_per_image,
                                    scale_range=scale_range, rotation=rotation,
                                    color_jitter=color_jitter, max_overlap=max_overlap)
        samples.append(Sample(encode_png(img) if encode else img, img.shape[1], img.shape[0],
                              det, id=f"{preset}_{i:06d}"))
    meta = {"synth": {"preset": preset, "seed": int(seed), "image_size": list(image_size),
                      "objects_per_image": list(objects_per_image),
                      "scale_range": list(scale_range), "rotation": rotation,
                      "color_jitter": color_jitter, "max_overlap": max_overlap}}
    return Dataset(samples, class_names, meta)


__all__ = ["synthesize", "synthesize_image", "encode_png", "SHAPE_CLASSES", "DIGIT_CLASSES",
           "PRESETS"]
