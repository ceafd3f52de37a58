"""The data sets of ``benchmarks/cold.py``, generated: COCO instances + results JSON files and
a VOC folder (see that module's docstring for their shape)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import orjson

#: COCO's 80 category ids (1..90 without the ten unused ones).
COCO_CATEGORY_IDS = [i for i in range(1, 91)
                     if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def coco_documents(num_images: int, *, seed: int = 0,
                   dets_per_image: float = 89.4) -> tuple[dict, list[dict]]:
    """A COCO instances document and a results list (see the module docstring)."""
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    image_ids = rng.choice(np.arange(1, 10 * num_images + 1), num_images, replace=False)
    n_gt = rng.poisson(7, num_images)
    n_dt = rng.poisson(dets_per_image, num_images)
    g_img = np.repeat(np.arange(num_images), n_gt)
    g = _boxes(rng, len(g_img), width, height)
    g_cat = rng.integers(0, 80, len(g_img))
    d_img = np.repeat(np.arange(num_images), n_dt)
    # Each detection copies a ground truth of its image when there is one (70% keep its
    # class), else it is a random box.
    first = np.concatenate([[0], np.cumsum(n_gt)])[d_img]
    has_gt = n_gt[d_img] > 0
    src = first + (rng.random(len(d_img)) * np.maximum(n_gt[d_img], 1)).astype(np.int64)
    src = np.where(has_gt, src, 0)
    d = _boxes(rng, len(d_img), width, height)
    if len(g):
        jitter = rng.normal(0, 1, (len(d_img), 4)) * 0.08 * np.repeat(
            g[src][:, 2:], 2, axis=1)[:, [0, 2, 1, 3]]
        copied = _clip_xywh(g[src] + jitter, width, height)
        d = np.where(has_gt[:, None], copied, d)
        same = has_gt & (rng.random(len(d_img)) < 0.7)
        d_cat = np.where(same, g_cat[src], rng.integers(0, 80, len(d_img)))
    else:
        d_cat = rng.integers(0, 80, len(d_img))
    scores = np.round(rng.random(len(d_img)), 5)
    cats = np.asarray(COCO_CATEGORY_IDS)
    images = [{"id": int(i), "file_name": f"{int(i):012d}.jpg", "width": width,
               "height": height} for i in image_ids]
    gb = np.round(g, 3).tolist()
    area = np.round(g[:, 2] * g[:, 3] * rng.uniform(0.45, 0.95, len(g)), 2).tolist()
    crowd = (rng.random(len(g)) < 0.01).astype(int).tolist()
    g_iid, g_cid = image_ids[g_img].tolist(), cats[g_cat].tolist()
    anns = [{"id": k + 1, "image_id": g_iid[k], "category_id": g_cid[k], "bbox": gb[k],
             "area": area[k], "iscrowd": crowd[k]} for k in range(len(gb))]
    categories = [{"id": int(c), "name": f"class_{c:02d}", "supercategory": "thing"}
                  for c in cats]
    db = np.round(d, 3).tolist()
    d_iid, d_cid, sc = image_ids[d_img].tolist(), cats[d_cat].tolist(), scores.tolist()
    results = [{"image_id": d_iid[k], "category_id": d_cid[k], "bbox": db[k], "score": sc[k]}
               for k in range(len(db))]
    return {"images": images, "annotations": anns, "categories": categories}, results


def _boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """``[n, 4]`` xywh boxes inside the image, sides log-uniform in [6, 300] x [6, 200]."""
    cx, cy = rng.uniform(30, width - 30, n), rng.uniform(30, height - 30, n)
    w = np.exp(rng.uniform(np.log(6), np.log(300), n))
    h = np.exp(rng.uniform(np.log(6), np.log(200), n))
    return _clip_xywh(np.stack([cx - w / 2, cy - h / 2, w, h], 1), width, height)


def _clip_xywh(b: np.ndarray, width: int, height: int) -> np.ndarray:
    x1 = np.clip(b[:, 0], 0, width - 2)
    y1 = np.clip(b[:, 1], 0, height - 2)
    x2 = np.clip(b[:, 0] + np.abs(b[:, 2]), x1 + 1, width)
    y2 = np.clip(b[:, 1] + np.abs(b[:, 3]), y1 + 1, height)
    return np.stack([x1, y1, x2 - x1, y2 - y1], 1)


def write_coco_files(folder: Path, num_images: int, seed: int = 0,
                     dets_per_image: float = 89.4) -> tuple[Path, Path, int, int]:
    """``gt.json`` and ``results.json`` in ``folder``; returns them and the box counts."""
    doc, results = coco_documents(num_images, seed=seed, dets_per_image=dets_per_image)
    folder.mkdir(parents=True, exist_ok=True)
    gt, res = folder / "gt.json", folder / "results.json"
    gt.write_bytes(orjson.dumps(doc))
    res.write_bytes(orjson.dumps(results))
    return gt, res, len(doc["annotations"]), len(results)


_VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
                "sheep", "sofa", "train", "tvmonitor")
_VOC_SIZES = ((500, 375), (375, 500), (500, 333))


def write_voc_folder(root: Path, num_images: int, seed: int = 0) -> int:
    """A VOC folder of ``num_images`` (XML with sizes, tiny JPEGs); returns the box count."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    jpegs = {}
    for w, h in _VOC_SIZES:
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (90, 120, 150)).save(buf, "JPEG", quality=50)
        jpegs[(w, h)] = buf.getvalue()
    total = 0
    for i in range(num_images):
        w, h = _VOC_SIZES[int(rng.integers(len(_VOC_SIZES)))]
        stem = f"2008_{i:06d}"
        k = 1 + int(rng.poisson(1.4))
        b = _boxes(rng, k, w, h)
        objects = "".join(
            f"<object><name>{_VOC_CLASSES[int(rng.integers(20))]}</name><pose>Unspecified"
            f"</pose><truncated>{int(rng.random() < 0.2)}</truncated><difficult>"
            f"{int(rng.random() < 0.1)}</difficult><bndbox><xmin>{int(x) + 1}</xmin>"
            f"<ymin>{int(y) + 1}</ymin><xmax>{int(x + bw)}</xmax><ymax>{int(y + bh)}</ymax>"
            "</bndbox></object>" for x, y, bw, bh in b.tolist())
        xml = (f"<annotation><folder>VOC2012</folder><filename>{stem}.jpg</filename><size>"
               f"<width>{w}</width><height>{h}</height><depth>3</depth></size>"
               f"<segmented>0</segmented>{objects}</annotation>\n")
        (root / "Annotations" / f"{stem}.xml").write_text(xml)
        (root / "JPEGImages" / f"{stem}.jpg").write_bytes(jpegs[(w, h)])
        total += k
    return total
