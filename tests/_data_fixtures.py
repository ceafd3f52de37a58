"""Small datasets for the format tests (tiny real PNG images, so headers carry the sizes)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from danlu.structures import Dataset, Detections, Sample


def png_bytes(w: int, h: int, color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


def make_dataset(n: int = 6, seed: int = 0, *, integer: bool = True, empty_every: int = 3,
                 classes: tuple[str, ...] = ("cat", "dog", "traffic-light"),
                 flags: tuple[str, ...] = ()) -> Dataset:
    """``n`` images (sizes from 40x30 to 64x48, bytes), random boxes inside them; every
    ``empty_every``-th image has no boxes."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        w, h = int(rng.integers(40, 65)), int(rng.integers(30, 49))
        k = 0 if empty_every and i % empty_every == empty_every - 1 else int(rng.integers(1, 5))
        x1 = rng.uniform(0, w - 10, k)
        y1 = rng.uniform(0, h - 10, k)
        x2 = x1 + rng.uniform(2, 10, k)
        y2 = y1 + rng.uniform(2, 10, k)
        xyxy = np.stack([x1, y1, x2, y2], 1)
        if integer:
            xyxy = np.floor(xyxy)
        det = Detections(xyxy, rng.integers(0, len(classes), k),
                         flags={f: rng.random(k) < 0.5 for f in flags})
        samples.append(Sample(png_bytes(w, h), w, h, det, id=f"img{i:03d}"))
    return Dataset(samples, list(classes))


def train_tiny_checkpoint(folder, img_size: int = 64, seed: int = 2):
    """``folder/run/best.pt``: fcos-tiny trained one epoch on 8 shape images of
    ``img_size`` (real, non-degenerate boxes for prediction tests; a few seconds)."""
    import danlu
    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=8, seed=seed, image_size=(img_size, img_size),
                    scale_range=(12, 28), encode=False)
    danlu.train(ds, epochs=1, out=folder / "run", batch=4, img_size=img_size, device="cpu",
                val_split=0, plots=False, verbose=False)
    return folder / "run" / "best.pt"
