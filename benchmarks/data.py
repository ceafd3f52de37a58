"""Reading datasets: ``danlu.data.load_dataset`` against globox (and pycocotools for COCO).

Formats: COCO, VOC, YOLO, CVAT for images 1.1 and LabelMe against globox's readers; DOTA
and Ultralytics OBB (which globox does not read) against danlu's VOC / DOTA read of the same
boxes.

A COCO-scale synthetic dataset (5,000 images, about 35,000 boxes, 80 classes with COCO's
non-contiguous category ids) is written once per size into a cache folder in each format,
with real (tiny, single-colour) PNG files whose headers carry the declared sizes. Each reader
parses the same files in the same run. ``agree`` = same number of images and boxes, and the
same sorted box sets (within 1e-3 px) on a sample of 200 images, after undoing each reader's
convention (globox keeps VOC's 1-based inclusive corners as they are in the file).

Also timed: image sizes from file headers (:func:`danlu.data.image_size`) against PIL's lazy
``Image.open(...).size``, which reads only the header too.

Run: ``danlu bench data`` (``--quick``: 200 images).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from benchmarks._common import Row, measure

TITLE = "data"
GOAL = "<= 1.0x globox"
SIZES = [(640, 480), (480, 640), (800, 600), (500, 375)]


def _cache_root() -> Path:
    return Path(os.environ.get("DANLU_BENCH_CACHE", Path(tempfile.gettempdir())
                               / "danlu-bench-data"))


def _make_dataset(n_images: int, seed: int = 0):  # noqa: ANN202 - a Dataset
    from PIL import Image

    from danlu.structures import Dataset, Detections, Sample

    rng = np.random.default_rng(seed)
    pngs = {}
    for w, h in SIZES:
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (90, 120, 150)).save(buf, "PNG")
        pngs[(w, h)] = buf.getvalue()
    cat_ids = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    names = [f"class_{i:02d}" for i in range(80)]
    samples = []
    for i in range(n_images):
        w, h = SIZES[int(rng.integers(len(SIZES)))]
        k = int(rng.poisson(7))
        bw = rng.integers(4, w // 2, k)
        bh = rng.integers(4, h // 2, k)
        x1 = (rng.random(k) * (w - bw)).astype(np.int64)
        y1 = (rng.random(k) * (h - bh)).astype(np.int64)
        xyxy = np.stack([x1, y1, x1 + bw, y1 + bh], 1)
        det = Detections(xyxy, rng.integers(0, 80, k),
                         flags={"difficult": rng.random(k) < 0.05})
        samples.append(Sample(pngs[(w, h)], w, h, det, id=f"{i:012d}"))
    return Dataset(samples, names, {"coco_category_ids": cat_ids})


def prepare(n_images: int) -> dict[str, Path]:
    """The dataset in every format, written once under the cache folder."""
    from danlu.data import save_dataset

    root = _cache_root() / f"n{n_images}"
    paths = {f: root / f for f in ("coco", "voc", "yolo", "dota", "cvat", "labelme",
                                   "yolo-obb")}
    if (root / "done").is_file() and all(p.is_dir() for p in paths.values()):
        return paths
    shutil.rmtree(root, ignore_errors=True)
    ds = _make_dataset(n_images)
    for fmt, p in paths.items():
        save_dataset(ds, p, fmt)
    (root / "done").write_text("ok\n")
    return paths


def _box_sets(items: dict[str, np.ndarray], keys: list[str]) -> list[np.ndarray]:
    out = []
    for k in keys:
        b = np.asarray(items.get(k, np.zeros((0, 4))), np.float64).reshape(-1, 4)
        out.append(b[np.lexsort(b.T[::-1])] if len(b) else b)
    return out


def _ours_boxes(ds, shift: float = 0.0) -> dict[str, np.ndarray]:  # noqa: ANN001
    out = {}
    for s in ds.samples:
        b = s.detections.xyxy.astype(np.float64).copy()
        b[:, :2] += shift
        out[Path(s.image).name] = b
    return out


def _globox_boxes(annset) -> dict[str, np.ndarray]:  # noqa: ANN001
    return {Path(a.image_id).name: np.asarray([b.ltrb for b in a.boxes], np.float64)
            for a in annset}


def _agree(ours: dict[str, np.ndarray], peer: dict[str, np.ndarray]) -> bool:
    n_ours = sum(len(v) for v in ours.values())
    n_peer = sum(len(v) for v in peer.values())
    if n_ours != n_peer:
        return False
    nonempty_ours = {k for k, v in ours.items() if len(v)}
    nonempty_peer = {k for k, v in peer.items() if len(v)}
    if nonempty_ours != nonempty_peer:
        return False
    keys = sorted(nonempty_ours)
    rng = np.random.default_rng(1)
    sample = [keys[i] for i in rng.choice(len(keys), min(200, len(keys)), replace=False)]
    for a, b in zip(_box_sets(ours, sample), _box_sets(peer, sample), strict=True):
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-3, rtol=0):
            return False
    return True


def run(quick: bool = False) -> list[Row]:
    """Time our readers against globox's and pycocotools' on the same files."""
    import globox
    from PIL import Image
    from pycocotools.coco import COCO

    from danlu.data import image_size, load_dataset

    n = 200 if quick else 5000
    paths = prepare(n)
    repeat = 3 if quick else 5
    rows: list[Row] = []
    label = f"{n} images"

    # COCO
    coco_json = paths["coco"] / "annotations.json"
    ours = load_dataset(paths["coco"], "coco")
    t_ours = measure(lambda: load_dataset(paths["coco"], "coco"), repeat=repeat)
    gb = globox.AnnotationSet.from_coco(coco_json)
    t_gb = measure(lambda: globox.AnnotationSet.from_coco(coco_json), repeat=repeat)
    ob = _ours_boxes(ours)
    rows.append(Row(f"read COCO ({label})", t_ours, "globox.from_coco", t_gb,
                    len(gb) == len(ours) and _agree(ob, _globox_boxes(gb)), GOAL))

    def pycoco():
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(coco_json))

    pc = pycoco()
    t_pc = measure(pycoco, repeat=repeat)
    pc_boxes: dict[str, list] = {}
    names = {i: im["file_name"] for i, im in pc.imgs.items()}
    for a in pc.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        pc_boxes.setdefault(Path(names[a["image_id"]]).name, []).append([x, y, x + w, y + h])
    rows.append(Row(f"read COCO ({label})", t_ours, "pycocotools.COCO", t_pc,
                    len(pc.imgs) == len(ours)
                    and _agree(ob, {k: np.asarray(v) for k, v in pc_boxes.items()}), ""))

    # VOC (globox keeps the file's 1-based corners: shift ours back for the comparison)
    ours = load_dataset(paths["voc"], "voc")
    t_ours = measure(lambda: load_dataset(paths["voc"], "voc"), repeat=repeat)
    ann = paths["voc"] / "Annotations"
    gb = globox.AnnotationSet.from_pascal_voc(ann)
    t_gb = measure(lambda: globox.AnnotationSet.from_pascal_voc(ann), repeat=repeat)
    rows.append(Row(f"read VOC ({label})", t_ours, "globox.from_pascal_voc", t_gb,
                    len(gb) == len(ours) and _agree(_ours_boxes(ours, 1.0), _globox_boxes(gb)),
                    GOAL))

    # YOLO
    ours = load_dataset(paths["yolo"], "yolo")
    t_ours = measure(lambda: load_dataset(paths["yolo"], "yolo"), repeat=repeat)
    lab, img = paths["yolo"] / "labels" / "train", paths["yolo"] / "images" / "train"

    def gb_yolo():
        return globox.AnnotationSet.from_yolo_v5(lab, image_folder=img, image_extension=".png")

    gb = gb_yolo()
    t_gb = measure(gb_yolo, repeat=repeat)
    rows.append(Row(f"read YOLO ({label})", t_ours, "globox.from_yolo_v5", t_gb,
                    len(gb) == len(ours) and _agree(_ours_boxes(ours), _globox_boxes(gb)),
                    GOAL))

    # DOTA: globox has no DOTA reader; check against the VOC read of the same boxes
    ours = load_dataset(paths["dota"], "dota")
    t_ours = measure(lambda: load_dataset(paths["dota"], "dota"), repeat=repeat)
    voc = load_dataset(paths["voc"], "voc")
    rows.append(Row(f"read DOTA ({label})", t_ours, "no peer (globox has no DOTA reader)",
                    float("nan"), _agree(_ours_boxes(ours), _ours_boxes(voc)), ""))

    # CVAT for images 1.1: one annotations.xml
    xml = paths["cvat"] / "annotations.xml"
    ours = load_dataset(paths["cvat"], "cvat")
    t_ours = measure(lambda: load_dataset(paths["cvat"], "cvat"), repeat=repeat)
    gb = globox.AnnotationSet.from_cvat(xml)
    t_gb = measure(lambda: globox.AnnotationSet.from_cvat(xml), repeat=repeat)
    rows.append(Row(f"read CVAT ({label})", t_ours, "globox.from_cvat", t_gb,
                    len(gb) == len(ours) and _agree(_ours_boxes(ours), _globox_boxes(gb)),
                    GOAL))

    # LabelMe: a JSON file beside each image
    ours = load_dataset(paths["labelme"], "labelme")
    t_ours = measure(lambda: load_dataset(paths["labelme"], "labelme"), repeat=repeat)
    gb = globox.AnnotationSet.from_labelme(paths["labelme"])
    t_gb = measure(lambda: globox.AnnotationSet.from_labelme(paths["labelme"]), repeat=repeat)
    rows.append(Row(f"read LabelMe ({label})", t_ours, "globox.from_labelme", t_gb,
                    len(gb) == len(ours) and _agree(_ours_boxes(ours), _globox_boxes(gb)),
                    GOAL))

    # Ultralytics OBB: globox has none; check against the DOTA read of the same polygons
    ours = load_dataset(paths["yolo-obb"], "yolo-obb")
    t_ours = measure(lambda: load_dataset(paths["yolo-obb"], "yolo-obb"), repeat=repeat)
    dota = load_dataset(paths["dota"], "dota")
    rows.append(Row(f"read YOLO OBB ({label})", t_ours, "no peer (globox has no OBB reader)",
                    float("nan"), _agree(_ours_boxes(ours), _ours_boxes(dota)), ""))

    # image sizes from headers vs PIL's lazy open
    files = sorted((paths["yolo"] / "images" / "train").iterdir())

    def pil_sizes():
        out = []
        for f in files:
            with Image.open(f) as im:
                out.append(im.size)
        return out

    ours_sizes = [image_size(f) for f in files]
    t_ours = measure(lambda: [image_size(f) for f in files], repeat=repeat)
    t_pil = measure(pil_sizes, repeat=repeat)
    rows.append(Row(f"image sizes ({len(files)} PNG headers)", t_ours,
                    "PIL Image.open().size", t_pil, ours_sizes == pil_sizes(), ""))
    return rows


if __name__ == "__main__":
    import sys

    from benchmarks._common import report

    report(TITLE, run(quick="--quick" in sys.argv))
