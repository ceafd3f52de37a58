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


# --- devkit-style references ----------
def _ap(rec: np.ndarray, prec: np.ndarray, use_07: bool) -> float:
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _group(gt: Dataset, preds: list[Detections], oriented: bool) -> dict:
    """Per class: ground truth per image and the detection list, as the devkits read files."""
    out = {}
    for c in range(len(gt.class_names)):
        recs, npos = {}, 0
        for i, s in enumerate(gt):
            d = s.detections
            m = d.labels == c
            geom = d.polygons[m].reshape(-1, 8) if oriented else d.xyxy[m]
            diff = (d.flag("difficult") | d.flag("iscrowd"))[m]
            recs[i] = {"bbox": geom.astype(float), "difficult": diff}
            npos += int((~diff).sum())
        ids, conf, boxes = [], [], []
        for i, p in enumerate(preds):
            for k in np.flatnonzero(p.labels == c):
                ids.append(i)
                conf.append(float(p.scores[k]))
                boxes.append((p.polygons[k].reshape(8) if oriented else p.xyxy[k])
                             .astype(float))
        out[c] = (recs, npos, ids, np.array(conf), boxes)
    return out


def reference_voc(grouped: dict, *, use_07: bool = False, thresh: float = 0.5) -> list[float]:
    """py-faster-rcnn's voc_eval loop (with the MATLAB devkit's stable sort and ``>=``)."""
    aps = []
    for c in sorted(grouped):
        recs, npos, ids, conf, boxes = grouped[c]
        det = {i: [False] * len(r["difficult"]) for i, r in recs.items()}
        order = np.argsort(-conf, kind="stable")
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for d, k in enumerate(order):
            r, bb = recs[ids[k]], boxes[k]
            ovmax, jmax = -np.inf, -1
            g = r["bbox"]
            if g.size:
                iw = np.maximum(np.minimum(g[:, 2], bb[2]) - np.maximum(g[:, 0], bb[0]), 0.0)
                ih = np.maximum(np.minimum(g[:, 3], bb[3]) - np.maximum(g[:, 1], bb[1]), 0.0)
                inters = iw * ih
                uni = ((bb[2] - bb[0]) * (bb[3] - bb[1])
                       + (g[:, 2] - g[:, 0]) * (g[:, 3] - g[:, 1]) - inters)
                overlaps = inters / uni
                ovmax, jmax = np.max(overlaps), int(np.argmax(overlaps))
            if ovmax >= thresh:
                if not r["difficult"][jmax]:
                    if not det[ids[k]][jmax]:
                        tp[d] = 1.0
                        det[ids[k]][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        if npos == 0:
            aps.append(float("nan"))
            continue
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        aps.append(_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps), use_07))
    return aps


def reference_dota(grouped: dict, *, use_07: bool = True, thresh: float = 0.5) -> list[float]:
    """DOTA_devkit's task 1 loop: +1-pixel horizontal pre-filter, then polygon IoU per kept
    ground truth (shapely here, polyiou there), ``ovmax > thresh``."""
    import shapely

    aps = []
    for c in sorted(grouped):
        recs, npos, ids, conf, boxes = grouped[c]
        det = {i: [False] * len(r["difficult"]) for i, r in recs.items()}
        gpolys = {i: shapely.polygons(r["bbox"].reshape(-1, 4, 2)) for i, r in recs.items()}
        order = np.argsort(-conf, kind="stable")
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for d, k in enumerate(order):
            r, bb = recs[ids[k]], boxes[k]
            ovmax, jmax = -np.inf, -1
            g = r["bbox"]
            if g.size:
                gx0, gy0 = g[:, 0::2].min(1), g[:, 1::2].min(1)
                gx1, gy1 = g[:, 0::2].max(1), g[:, 1::2].max(1)
                bx0, by0, bx1, by1 = bb[0::2].min(), bb[1::2].min(), bb[0::2].max(), \
                    bb[1::2].max()
                iw = np.maximum(np.minimum(gx1, bx1) - np.maximum(gx0, bx0) + 1.0, 0.0)
                ih = np.maximum(np.minimum(gy1, by1) - np.maximum(gy0, by0) + 1.0, 0.0)
                inters = iw * ih
                uni = ((bx1 - bx0 + 1.0) * (by1 - by0 + 1.0)
                       + (gx1 - gx0 + 1.0) * (gy1 - gy0 + 1.0) - inters)
                keep = np.where(inters / uni > 0)[0]
                if len(keep):
                    gp = gpolys[ids[k]][keep]
                    bp = shapely.polygons(bb.reshape(4, 2))
                    inter = shapely.area(shapely.intersection(gp, bp))
                    ovs = inter / (shapely.area(gp) + shapely.area(bp) - inter)
                    ovmax, jmax = np.max(ovs), int(keep[int(np.argmax(ovs))])
            if ovmax > thresh:
                if not r["difficult"][jmax]:
                    if not det[ids[k]][jmax]:
                        tp[d] = 1.0
                        det[ids[k]][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        if npos == 0:
            aps.append(float("nan"))
            continue
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        aps.append(_ap(tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps), use_07))
    return aps


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
    grouped = _group(gt, preds, oriented=False)
    voc: dict = {}
    ours_s = measure(lambda: voc.update(r=evaluate(gt, preds, protocol="voc12")),
                     repeat=3 if quick else 5)
    ref: dict = {}
    ref_s = measure(lambda: ref.update(aps=reference_voc(grouped)), repeat=1, warmup=0)
    rows.append(Row(f"VOC all-point, {case}, {gt.num_boxes} GT, {dets} dets", ours_s,
                    "devkit loop (voc_eval)", ref_s, _aps_agree(voc["r"].per_class, ref["aps"]),
                    ">= 50x faster"))

    # DOTA task 1 vs the devkit loop
    gt_o, preds_o = make_data(num_images, classes=15, oriented=True, seed=1)
    grouped = _group(gt_o, preds_o, oriented=True)
    dota: dict = {}
    ours_s = measure(lambda: dota.update(r=evaluate(gt_o, preds_o, protocol="dota")),
                     repeat=3 if quick else 5)
    ref_s = measure(lambda: ref.update(aps=reference_dota(grouped)), repeat=1, warmup=0)
    dets_o = sum(len(p) for p in preds_o)
    rows.append(Row(f"DOTA task 1, {case}, {gt_o.num_boxes} GT, {dets_o} dets", ours_s,
                    "devkit loop (task1 + shapely)", ref_s,
                    _aps_agree(dota["r"].per_class, ref["aps"]), ">= 50x faster"))
    return rows


if __name__ == "__main__":
    from benchmarks._common import report

    report(TITLE, run(quick=True))
