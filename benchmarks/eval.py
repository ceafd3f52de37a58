"""Evaluation at COCO scale: ours against hotcoco / faster-coco-eval / pycocotools (COCO) and
against the devkits' own algorithm, a Python loop over detections (VOC all-point, DOTA task 1).

The input is synthetic and COCO-sized: 5,000 images, ~35k ground-truth boxes (crowd and small /
large ones included), ~450k scored detections (jittered copies of the ground truth plus noise),
80 classes (DOTA: 15 classes of rotated rectangles). ``quick=True`` uses 300 images.

* COCO: ours is ``danlu.evaluate(gt, preds)`` end to end from an in-memory ``Dataset``; each peer
  is fed its own way beforehand (COCO objects built, results loaded) and timed on
  ``evaluate(); accumulate(); summarize()`` only. ``agree``: all 12 stats within 1e-12.
* VOC / DOTA: the reference is the devkit's loop (py-faster-rcnn's ``voc_eval`` / DOTA_devkit's
  ``dota_evaluation_task1``: per class, one detection at a time, numpy over that image's ground
  truth; polygon IoU by shapely where DOTA_devkit calls its C++ ``polyiou``), with MATLAB's
  stable sort and ``>=`` (VOC) / ``>`` (DOTA). ``agree``: every class AP within 1e-9.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from benchmarks._common import Row, measure
from danlu.evaluate.reference import devkit_average_precisions, devkit_group
from danlu.structures import Dataset, Detections, Sample

TITLE = "eval"


# --- data ----------
def _rotated(par: list[np.ndarray]) -> np.ndarray:
    cx, cy, w, h, a = par
    c, s = np.cos(a)[:, None], np.sin(a)[:, None]
    dx = np.array([-1.0, 1.0, 1.0, -1.0]) * w[:, None] / 2
    dy = np.array([-1.0, -1.0, 1.0, 1.0]) * h[:, None] / 2
    return np.stack([cx[:, None] + dx * c - dy * s, cy[:, None] + dx * s + dy * c], -1)


def make_data(num_images: int, *, classes: int = 80, oriented: bool = False,
              seed: int = 0) -> tuple[Dataset, list[Detections]]:
    """~7 ground-truth boxes and ~90 detections per image."""
    rng = np.random.default_rng(seed)
    samples, preds = [], []
    for i in range(num_images):
        n = int(rng.poisson(7))
        labels = rng.integers(0, classes, n)
        par = [rng.uniform(30, 610, n), rng.uniform(30, 450, n),
               np.exp(rng.uniform(np.log(6), np.log(300), n)),
               np.exp(rng.uniform(np.log(6), np.log(200), n)),
               rng.uniform(-np.pi / 2, np.pi / 2, n) if oriented else np.zeros(n)]
        m = int(rng.poisson(90))
        if n:
            src = rng.integers(0, n, m)
            jit = [0.08 * par[2][src], 0.08 * par[3][src], 0.1 * par[2][src],
                   0.1 * par[3][src], 0.15 * np.ones(m)]
            q = [par[k][src] + rng.normal(0, 1, m) * jit[k] for k in range(5)]
            lab = np.where(rng.random(m) < 0.7, labels[src], rng.integers(0, classes, m))
        else:
            q = [rng.uniform(30, 610, m), rng.uniform(30, 450, m), rng.uniform(6, 200, m),
                 rng.uniform(6, 200, m), rng.uniform(-1, 1, m) if oriented else np.zeros(m)]
            lab = rng.integers(0, classes, m)
        q[2], q[3] = np.abs(q[2]) + 1, np.abs(q[3]) + 1
        if not oriented:
            q[4] = np.zeros(m)
        scores = rng.random(m).astype(np.float32)
        if oriented:
            gt = Detections(None, labels, polygons=_rotated(par),
                            flags={"difficult": rng.random(n) < 0.05})
            det = Detections(None, lab, scores=scores, polygons=_rotated(q))
        else:
            gxyxy = np.stack([par[0] - par[2] / 2, par[1] - par[3] / 2,
                              par[0] + par[2] / 2, par[1] + par[3] / 2], 1)
            dxyxy = np.stack([q[0] - q[2] / 2, q[1] - q[3] / 2,
                              q[0] + q[2] / 2, q[1] + q[3] / 2], 1)
            gt = Detections(gxyxy, labels, flags={"iscrowd": rng.random(n) < 0.01,
                                                  "difficult": rng.random(n) < 0.05})
            det = Detections(dxyxy, lab, scores=scores)
        samples.append(Sample(None, 640, 480, gt, id=i))
        preds.append(det)
    names = [f"class{c}" for c in range(classes)]
    return Dataset(samples, names), preds


# --- COCO peers ----------
def _coco_dicts(gt: Dataset, preds: list[Detections]) -> tuple[dict, list[dict]]:
    """The COCO JSON documents (as loaded), difficult boxes dropped (COCO has none)."""
    images = [{"id": i, "width": s.width, "height": s.height} for i, s in enumerate(gt)]
    anns = []
    for i, s in enumerate(gt):
        d = s.detections
        for k in range(len(d)):
            if d.flag("difficult")[k]:
                continue
            x1, y1, x2, y2 = (float(v) for v in d.xyxy[k])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(d.labels[k]),
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(d.flag("iscrowd")[k])})
    cats = [{"id": c, "name": n} for c, n in enumerate(gt.class_names)]
    res = []
    for i, d in enumerate(preds):
        for k in range(len(d)):
            x1, y1, x2, y2 = (float(v) for v in d.xyxy[k])
            res.append({"image_id": i, "category_id": int(d.labels[k]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(d.scores[k])})
    return {"images": images, "annotations": anns, "categories": cats}, res


def _peer(module: str, doc: dict, res: list[dict]):  # noqa: ANN202
    """A function running the peer's evaluate/accumulate/summarize on objects built here."""
    import copy

    with contextlib.redirect_stdout(io.StringIO()):
        if module == "hotcoco":
            import hotcoco

            coco_gt = hotcoco.COCO(copy.deepcopy(doc))
            coco_dt = coco_gt.load_res(copy.deepcopy(res))

            def make():  # noqa: ANN202
                return hotcoco.COCOeval(coco_gt, coco_dt, "bbox")
        elif module == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt = COCO(copy.deepcopy(doc))
            coco_dt = coco_gt.loadRes(copy.deepcopy(res))

            def make():  # noqa: ANN202
                return COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a: None)
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(doc)
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(copy.deepcopy(res))

            def make():  # noqa: ANN202
                return COCOeval(coco_gt, coco_dt, "bbox")

    holder: dict = {}

    def run() -> None:
        ev = make()
        with contextlib.redirect_stdout(io.StringIO()):
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        holder["stats"] = np.asarray(ev.stats, float)

    return run, holder


def _aps_agree(ours: dict[str, float], ref: list[float]) -> bool:
    a, b = np.array(list(ours.values())), np.array(ref)
    return bool(np.array_equal(np.isnan(a), np.isnan(b))
                and np.all(np.abs(a[~np.isnan(a)] - b[~np.isnan(b)]) <= 1e-9))


# --- run ----------
def run(quick: bool = False) -> list[Row]:
    from danlu.evaluate import evaluate

    num_images = 300 if quick else 5000
    rows: list[Row] = []
    case = f"{num_images} images"

    # COCO
    gt, preds = make_data(num_images)
    # COCO has no difficult boxes: drop them so that every engine sees the same input.
    gt_coco = Dataset([Sample(None, s.width, s.height, s.detections[~s.detections.flag(
        "difficult")], id=s.id) for s in gt], gt.class_names)
    boxes = gt_coco.num_boxes
    dets = sum(len(p) for p in preds)
    ours_result: dict = {}

    def ours() -> None:
        ours_result["stats"] = evaluate(gt_coco, preds, protocol="coco").stats

    ours_s = measure(ours, repeat=3 if quick else 5)
    doc, res = _coco_dicts(gt_coco, preds)
    coco_case = f"COCO bbox, {case}, {boxes} GT, {dets} dets"
    for peer, goal in (("hotcoco", "<= 1.2x hotcoco"), ("faster_coco_eval", ""),
                       ("pycocotools", "")):
        try:
            fn, holder = _peer(peer, doc, res)
        except ImportError:
            continue
        slow = peer == "pycocotools" and not quick
        peer_s = measure(fn, repeat=1 if slow else 3, warmup=0 if slow else 1)
        agree = bool(np.all(np.abs(holder["stats"] - ours_result["stats"]) <= 1e-12))
        rows.append(Row(coco_case, ours_s, peer.replace("_", "-"), peer_s, agree, goal))

    # VOC all-point vs the devkit loop
    grouped = devkit_group(gt, preds)
    voc: dict = {}
    ours_s = measure(lambda: voc.update(r=evaluate(gt, preds, protocol="voc12")),
                     repeat=3 if quick else 5)
    ref: dict = {}
    ref_s = measure(lambda: ref.update(aps=devkit_average_precisions(grouped, use_07=False)),
                    repeat=1, warmup=0)
    rows.append(Row(f"VOC all-point, {case}, {gt.num_boxes} GT, {dets} dets", ours_s,
                    "devkit loop (voc_eval)", ref_s, _aps_agree(voc["r"].per_class, ref["aps"]),
                    ">= 50x faster"))

    # DOTA task 1 vs the devkit loop
    gt_o, preds_o = make_data(num_images, classes=15, oriented=True, seed=1)
    grouped = devkit_group(gt_o, preds_o, oriented=True, difficult_flags=("difficult",))
    dota: dict = {}
    ours_s = measure(lambda: dota.update(r=evaluate(gt_o, preds_o, protocol="dota")),
                     repeat=3 if quick else 5)
    ref_s = measure(lambda: ref.update(aps=devkit_average_precisions(
        grouped, use_07=True, match=">", plus_one=1.0, oriented=True)), repeat=1, warmup=0)
    dets_o = sum(len(p) for p in preds_o)
    rows.append(Row(f"DOTA task 1, {case}, {gt_o.num_boxes} GT, {dets_o} dets", ours_s,
                    "devkit loop (task1 + shapely)", ref_s,
                    _aps_agree(dota["r"].per_class, ref["aps"]), ">= 50x faster"))
    return rows


if __name__ == "__main__":
    from benchmarks._common import report

    report(TITLE, run(quick=True))
