"""Training-style loading from a pack file vs decoding JPEG + parsing VOC XML every time.

Input: synthetic JPEG images (quality 90, 256-640 px a side, 1-6 boxes each) written as a VOC
folder by ``danlu.data.save_dataset``. One epoch = every image once, in a shuffled order,
as ``(S x S x 3 uint8 letterboxed image, boxes, labels)``:

* peer: ``defusedxml`` parses the XML, PIL decodes the JPEG, converts to RGB, resizes
  (bilinear) and letterboxes; boxes are converted from VOC pixels and scaled;
* ours: :class:`danlu.data.pack.PackedDataset` (memory-mapped; the page cache is warm, as it
  is from the second epoch on).

Agreement: every image is identical pixel for pixel and every box equal within 1e-4 px (the
pack stores exactly what the peer path computes). A third row shows the one-time cost of
building the pack (load the VOC folder + decode + resize + write) against one peer epoch.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks._common import Row, measure

TITLE = "pack"
IMG_SIZE = 256


def _make_voc(root: Path, n: int, seed: int = 0) -> None:
    from danlu.data.io import save_dataset
    from danlu.structures import Dataset, Detections, Sample

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(256, 641, 2))
        coarse = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).copy()
        k = int(rng.integers(1, 7))
        wh = rng.uniform(16, 120, (k, 2))
        xy = rng.uniform(0, 1, (k, 2)) * ([w, h] - wh)
        boxes = np.round(np.concatenate([xy, xy + wh], 1))
        labels = rng.integers(0, 4, k)
        for (x1, y1, x2, y2), c in zip(boxes.astype(int), labels, strict=True):
            img[y1:y2, x1:x2] = (60 * c, 255 - 60 * c, 128)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        samples.append(Sample(buf.getvalue(), w, h, Detections(boxes, labels), id=f"im{i:05d}"))
    save_dataset(Dataset(samples, ["a", "b", "c", "d"]), root, "voc")


def _peer_item(xml_path: Path, image_dir: Path, class_index: dict[str, int]):  # noqa: ANN202
    from defusedxml import ElementTree

    root = ElementTree.parse(xml_path).getroot()
    boxes, labels = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        x1, y1, x2, y2 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x1 - 1, y1 - 1, x2, y2))  # VOC 1-based inclusive -> continuous
        labels.append(class_index[obj.find("name").text])
    with Image.open(image_dir / root.find("filename").text) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = IMG_SIZE / max(w, h)
        nw, nh = min(IMG_SIZE, max(1, round(w * s))), min(IMG_SIZE, max(1, round(h * s)))
        small = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    out = np.full((IMG_SIZE, IMG_SIZE, 3), 114, np.uint8)
    out[:nh, :nw] = small
    b = np.asarray(boxes, np.float64).reshape(-1, 4) * [nw / w, nh / h, nw / w, nh / h]
    return out, b.astype(np.float32), np.asarray(labels, np.int64)


def run(quick: bool = False) -> list[Row]:
    from danlu.data.io import load_dataset
    from danlu.data.pack import PackedDataset, pack_dataset

    n = 200 if quick else 2000
    tmp = Path(tempfile.mkdtemp(prefix="danlu_bench_pack_"))
    try:
        voc = tmp / "voc"
        _make_voc(voc, n)
        classes = (voc / "labels.txt").read_text().split()
        class_index = {c: i for i, c in enumerate(classes)}
        xmls = sorted((voc / "Annotations").glob("*.xml"))
        order = np.random.default_rng(1).permutation(n)

        def build() -> Path:
            return pack_dataset(load_dataset(voc, "voc"), tmp / "train.pack", IMG_SIZE)

        t0 = time.perf_counter()
        build()
        build_s = time.perf_counter() - t0
        pk = PackedDataset(tmp / "train.pack")
        assert pk.ids == [p.stem for p in xmls]

        def peer_epoch() -> None:
            for i in order:
                _peer_item(xmls[i], voc / "JPEGImages", class_index)

        def ours_epoch() -> None:
            for i in order:
                pk[int(i)]

        agree = True
        for i in range(n):
            ref_img, ref_boxes, ref_labels = _peer_item(xmls[i], voc / "JPEGImages", class_index)
            img, det = pk[i]
            agree &= bool(np.array_equal(img, ref_img)
                          and np.allclose(det.xyxy, ref_boxes, atol=1e-4)
                          and np.array_equal(det.labels, ref_labels))
        peer_s = measure(peer_epoch, repeat=1 if not quick else 3, warmup=1)
        ours_s = measure(ours_epoch, repeat=5, warmup=1)
        return [
            Row(f"epoch of {n} images @{IMG_SIZE}px: {n / ours_s:,.0f} vs {n / peer_s:,.0f} img/s",
                ours_s, "PIL decode+resize, defusedxml", peer_s, agree, ">= 5x images/s"),
            Row(f"build the pack once ({n} images)", build_s, "one peer epoch", peer_s, True,
                "about one epoch"),
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
