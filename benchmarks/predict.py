"""Benchmark: sliced prediction, ours against SAHI on the same model and the same scene.

The model and the inputs (``benchmarks/_predict_scene.py``): ``fcos-tiny`` at 256 px trained
once on 256 x 256 ``shapes`` images of small objects plus part of the demo's training split
(cached in ``~/.cache/danlu/bench-predict/``); an 8,000 x 8,000 mosaic scene of about 2,000
small objects (12-40 px canvases) with its ground truth. Every side runs the same weights on
the same tiles (256 px, overlap 0.2, 1,521 tiles: no resize at 256), the same per-tile
post-processing (the model's own hard NMS at its IoU, 0.6, 100 per tile) and the same score
threshold (0.1: at or above SAHI's ``LOW_MODEL_CONFIDENCE``, so SAHI keeps the merge it is
asked for); merges across tiles at 0.5. torch on every core. The sliced runs go in two
interleaved rounds (every tool once, then again) and the faster of the two counts (so does
the model-alone pass); this shared machine's load moves single runs by up to 2x.

Rows (the timing table):

* **sliced, ours vs SAHI**: ``sliced_predict(Predictor(ckpt, batch_size=16), scene,
  slice_size=256, overlap=0.2, merge=...)`` (its cut-box rule on, the default) with hard NMS
  (IoU 0.5) and with greedy NMM (IoS 0.5), against SAHI ``get_sliced_prediction`` (SAHI
  0.12.8 takes ``batch_size``: 16, one forward per batch through the wrapper's
  ``perform_batch_inference``) with NMS/IOU and with GREEDYNMM/IOS (its default), no full-image
  pass on either side (``perform_standard_pred=False``, ``full_pass=False``), SAHI's merge on its
  default backend (numba here). Our model is wrapped as a SAHI ``DetectionModel`` subclass
  (``_predict_scene.sahi_model``: ``predict_tensor`` on the stacked slices, the same as ours per
  tile). SAHI's default merge also runs the way SAHI runs its own torchvision / mmdet /
  detectron2 wrappers: ``perform_inference`` only, so SAHI's ``perform_batch_inference`` defers
  and ``batch_size=16`` still feeds one slice per forward pass. Last peer: a plain loop over the
  same windows, 16 tiles per ``model(list)`` call with the torchvision model's own
  post-processing, shifted, one ``torchvision.ops.batched_nms`` at 0.5.
  ``agree``: our timed output equals ours recomputed from the plain loop's per-tile boxes
  (``merge_tiles``: the tiles saw the same boxes), and our merge with the cut-box rule off
  equals the peer's result (same count, every box matched one-to-one, same class, IoU >= 0.99).
  Accuracy of each result is in the metrics table.
* **tiles/s**: ours (tiles / sliced wall time, the hard-NMS run above, default ``workers``:
  ``slicing.reader_threads``, 0 on the CPU, tiles read in the calling thread) against the model
  alone on the same 1,521 tiles as pre-cut ``uint8 [16, 3, 256, 256]`` tensors through
  ``Predictor.predict_tensor`` (forward, candidate decoding and per-tile NMS: no image reading,
  no map-back, no merge), then ours again with ``workers=1`` (one reader thread beside the
  model, the pipelined path an accelerator gets). The row's times are seconds per tile.
  ``agree``: the same boxes per tile as the plain loop's tiles; the ``workers=1`` result the
  same as the default's.
* **batch 1 vs 16**: ``sliced_predict`` at ``batch_size=1`` on the whole scene (best of two
  runs) against the batch-16 hard-NMS run above (``quick``: both on a 600 x 600 crop);
  ``agree``: the same number of boxes, every one matched at IoU >= 0.99.
* **merge, 100,000 crowded candidates**: 12,500 objects in 400 clusters over 8,000 x 8,000
  (10 classes, 12-60 px), each seen 1-15 times jittered by 2 px (a tenth relabelled, like the
  copies of one object from overlapping tiles): ``merge_tiles`` (no cut flags) hard NMS vs
  ``torchvision.ops.batched_nms`` (agree: the same kept set), greedy NMM IoS 0.5 vs SAHI's
  ``GreedyNMMPostprocess`` on ``ObjectPrediction`` lists built beforehand (agree: the same merged
  boxes), and the clustering alone, ``danlu.boxes.greedy_nmm`` vs SAHI's
  ``batched_greedy_nmm`` on its numba and numpy backends (agree: the same clusters).
* **folder**: 64 PNGs of 640 x 480 in a temporary folder, ``Predictor.predict(paths,
  batch_size=16)`` vs a plain loop (PIL decode, the same letterbox, ``model([x])`` one image at
  a time, its own post-processing); agree: the same boxes per image.

The memory table: a 30,000 x 30,000 RGB TIFF (tiled 512, zlib; crops of the scene; cached
beside the model, ~1-2 GB on disk), predicted in a fresh process per tool (VmHWM of the child):
ours ``sliced_predict(predictor, path, ...)`` reading by window (``danlu.infer.raster``),
SAHI ``get_sliced_prediction(path, ...)``; slices of 1,024 px resized to the model's 256 (at 256
px it would be 21,000 tiles: too slow for 2 cores), batch 16, NMS 0.5. ``quick``: 6,000 x
6,000.

The metrics tables: AP50 and AP (0.5:0.95) of each sliced result on the one 8,000 x 8,000
image, read from the accumulated precision array at ``maxDets=10000`` (the summary's first
number uses 100 per image and class: the scene holds ~500 objects per class), by danlu's COCO
evaluation (pycocotools' ``evaluateImg`` + ``accumulate`` compiled: the same numbers), the
first row also by pycocotools' own ``COCOeval`` (``eval["precision"]`` at the same index, area
'all' only: its Python loop takes a minute per result here), the two compared in its note;
and hard NMS vs Soft-NMS (linear, gaussian) vs IoU-guided NMS (FCOS centerness as the
localization score) on the demo's test split (100 images; the model never saw them) and on a
crowded set (100 images of 10-20 objects overlapping up to 0.6 IoU/IoS), COCO AP by danlu's
evaluation (pycocotools' numbers), from the same candidates (score >= 0.001); ``time`` is the
suppression alone over all images. On the same two sets, whole predictions with and without
test-time augmentation (``Predictor(tta=True)``: flip, 0.83x and 1.25x, fused by WBF); their
time includes the forward passes.

Run: ``danlu bench predict`` (about 9 minutes on 2 cores after the one-time training, which
takes 5-20 minutes depending on the machine's load, and the one-time 48 s TIFF write;
``--quick``: small sizes, a smoke run whose numbers mean little).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks import _predict_scene as scene_mod
from benchmarks._common import MetricRow, Row, measure

TITLE = "predict: sliced prediction, ours vs SAHI, same model and scene"
SCORE = 0.1
MERGE_IOU = 0.5
BATCH = 16
OVERLAP = 0.2
MAX_DETS = 10_000
MATCH_IOU = 0.99
ROUNDS = 2


_T0 = [time.perf_counter()]


def _say(msg: str) -> None:
    print(f"[bench predict {time.perf_counter() - _T0[0]:6.0f} s] {msg}", file=sys.stderr,
          flush=True)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# -- comparisons -------------------------------------------------------------------------------
def match_count(a, b, iou: float = MATCH_IOU) -> int:
    """Boxes of ``a`` matched one-to-one to a box of ``b`` of the same class at IoU >= iou.

    Boxes that are the same up to float noise are paired first by their class and corners
    rounded to 0.1 px (each pair's IoU checked); what is left unpaired is matched by the
    Hungarian algorithm on its IoU matrix, per class (greedily by IoU when a class leaves more
    than 3,000 boxes)."""
    from danlu.boxes.iou import box_iou

    def keys(d):
        r = np.round(d.xyxy.astype(np.float64), 1).tolist()
        return [(int(lab), *c) for lab, c in zip(d.labels.tolist(), r, strict=True)]

    pool: dict = {}
    for j, k in enumerate(keys(b)):
        pool.setdefault(k, []).append(j)
    pa, pb = [], []
    for i, k in enumerate(keys(a)):
        js = pool.get(k)
        if js:
            pa.append(i)
            pb.append(js.pop())
    matched = 0
    left_a, left_b = np.ones(len(a), bool), np.ones(len(b), bool)
    if pa:
        from danlu.boxes.iou import box_iou_aligned

        ia, ib = np.array(pa), np.array(pb)
        ok = box_iou_aligned(a.xyxy[ia].astype(np.float64),
                             b.xyxy[ib].astype(np.float64)) >= iou
        matched = int(ok.sum())
        left_a[ia[ok]] = False
        left_b[ib[ok]] = False
    ra, rb = a[left_a], b[left_b]
    for lab in np.union1d(ra.labels, rb.labels):
        ia, ib = np.flatnonzero(ra.labels == lab), np.flatnonzero(rb.labels == lab)
        if not len(ia) or not len(ib):
            continue
        m = box_iou(ra.xyxy[ia].astype(np.float64), rb.xyxy[ib].astype(np.float64))
        if max(len(ia), len(ib)) <= 3000:
            from scipy.optimize import linear_sum_assignment

            r, c = linear_sum_assignment(-m)
            matched += int((m[r, c] >= iou).sum())
            continue
        pairs = np.argwhere(m >= iou)
        pairs = pairs[np.argsort(-m[pairs[:, 0], pairs[:, 1]], kind="stable")]
        used_a, used_b = set(), set()
        for i, j in pairs.tolist():
            if i not in used_a and j not in used_b:
                used_a.add(i)
                used_b.add(j)
        matched += len(used_a)
    return matched


def unmatched_scores(a, b, iou: float = MATCH_IOU) -> np.ndarray:
    """Scores of the boxes of ``a`` and of ``b`` that have no box of the same class at IoU
    >= ``iou`` in the other set (a diagnostic for a disagreement)."""
    from danlu.boxes.iou import box_iou

    out = []
    for x, y in ((a, b), (b, a)):
        for lab in np.unique(x.labels):
            ix, iy = np.flatnonzero(x.labels == lab), np.flatnonzero(y.labels == lab)
            if not len(iy):
                out.append(x.scores[ix])
                continue
            best = np.zeros(len(ix))
            for k in range(0, len(ix), 2000):
                m = box_iou(x.xyxy[ix[k:k + 2000]].astype(np.float64),
                            y.xyxy[iy].astype(np.float64))
                best[k:k + 2000] = m.max(1)
            out.append(x.scores[ix[best < iou]])
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def why_not(a, b) -> str:
    """`` (unmatched: ...)`` naming the scores of the boxes only one side has."""
    s = unmatched_scores(a, b)
    if not len(s):
        return ""
    near = np.abs(s - SCORE) <= 1e-4
    what = (f"score{'s' if len(s) > 1 else ''} {', '.join(f'{v:.8f}' for v in s[:3])}"
            + (" ..." if len(s) > 3 else ""))
    tail = (f": within 1e-4 of the {SCORE:g} score threshold, kept on one side only"
            if near.all() else "")
    return f"; unmatched: {len(s)} box{'es' if len(s) > 1 else ''}, {what}{tail}"


def same_boxes(a, b, iou: float = MATCH_IOU) -> bool:
    """The same number of boxes, every one matched (same class, IoU >= ``iou``)."""
    return len(a) == len(b) and match_count(a, b, iou) == len(a)


def coco_ap_huge(gt, det, width: int, height: int, max_dets: int = MAX_DETS) -> dict:
    """AP50 and AP of one image, read from the accumulated precision array at
    ``maxDets=max_dets`` (area 'all'): danlu's COCO evaluation, which is pycocotools'
    ``evaluateImg`` + ``accumulate`` compiled (the same numbers to the last bit)."""
    from danlu.evaluate.coco import evaluate_coco

    if not len(det):
        return {"AP50": 0.0, "AP": 0.0}
    r = evaluate_coco(scene_mod.ground_truth_dataset(gt, width, height), [det],
                      max_dets=(1, 100, max_dets))
    return _ap_at(r.precision, r.params["max_dets"].index(max_dets))


def _ap_at(precision: np.ndarray, m: int) -> dict:
    p50, pall = precision[0, :, :, 0, m], precision[:, :, :, 0, m]
    return {"AP50": float(p50[p50 > -1].mean()), "AP": float(pall[pall > -1].mean())}


def pycocotools_ap_huge(gt, det, width: int, height: int, max_dets: int = MAX_DETS) -> dict:
    """The same two numbers by pycocotools' ``COCOeval`` itself (``eval['precision']`` at
    ``maxDets=max_dets``), with only the 'all' area range evaluated: its pure-Python
    ``evaluateImg`` takes about a minute per result here with the four default ranges."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = []
    for k, (b, lab) in enumerate(zip(gt.xyxy.tolist(), gt.labels.tolist(), strict=True)):
        w, h = b[2] - b[0], b[3] - b[1]
        anns.append({"id": k + 1, "image_id": 1, "category_id": int(lab) + 1,
                     "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(scene_mod.CLASSES)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": 1, "width": width, "height": height}],
                        "annotations": anns, "categories": cats}
        coco.createIndex()
        res = [{"image_id": 1, "category_id": int(lab) + 1,
                "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": float(s)}
               for b, lab, s in zip(det.xyxy.astype(np.float64).tolist(),
                                    det.labels.tolist(), det.scores.tolist(), strict=True)]
        dt = coco.loadRes(res)
        ev = COCOeval(coco, dt, "bbox")
        ev.params.maxDets = [1, 100, max_dets]
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e5 ** 2]], ["all"]
        ev.evaluate()
        ev.accumulate()
    return _ap_at(ev.eval["precision"], ev.params.maxDets.index(max_dets))


# -- the sliced runs -------------------------------------------------------------------------
def plain_loop(model, image: np.ndarray, windows, batch: int, score: float, transform=None):
    """A plain batched loop over ``windows``: the torchvision model's own post-processing per
    tile, shifted to the image, one ``torchvision.ops.batched_nms``. Returns ``(merged
    Detections, per-tile Detections in image pixels)``. Tiles of another side than the
    model's go through ``transform`` (its letterbox) and back; at the model's side they go in
    as they are."""
    import torchvision

    from danlu.infer.backend import score_threshold_holder
    from danlu.structures import Detections

    holder = score_threshold_holder(model)
    old = holder.score_thresh
    holder.score_thresh = score
    model.eval()
    found = []
    try:
        with torch.inference_mode():
            for i in range(0, len(windows), batch):
                chunk = windows[i:i + batch]
                tiles = [image[y0:y1, x0:x1] for x0, y0, x1, y1 in chunk]
                frames = None
                if transform is not None and any(t.shape[:2] != (transform.size,) * 2
                                                 for t in tiles):
                    pairs = [transform.image(t) for t in tiles]
                    x = torch.stack([p for p, _ in pairs]).float().div_(255.0)
                    frames = [f for _, f in pairs]
                else:
                    x = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float()
                    x = x.div_(255.0)
                for k, ((x0, y0, _, _), out) in enumerate(zip(chunk, model(list(x)),
                                                              strict=True)):
                    d = Detections(out["boxes"].numpy(), out["labels"].numpy(),
                                   scores=out["scores"].numpy())
                    if frames is not None:
                        d = transform.back(d, frames[k], drop_outside=True)
                    found.append(d.translate(float(x0), float(y0)))
    finally:
        holder.score_thresh = old
    boxes = torch.from_numpy(np.concatenate([d.xyxy for d in found]))
    scores = torch.from_numpy(np.concatenate([d.scores for d in found]))
    labels = torch.from_numpy(np.concatenate([d.labels for d in found]))
    keep = torchvision.ops.batched_nms(boxes, scores, labels, MERGE_IOU)
    merged = Detections(boxes[keep].numpy(), labels[keep].numpy(), scores=scores[keep].numpy())
    return merged, found


def _sahi_sliced(model, image, kind: str, size: int = 256):
    from sahi.predict import get_sliced_prediction

    metric = "IOS" if kind == "GREEDYNMM" else "IOU"
    res = get_sliced_prediction(image, model, slice_height=size, slice_width=size,
                                overlap_height_ratio=OVERLAP, overlap_width_ratio=OVERLAP,
                                perform_standard_pred=False, postprocess_type=kind,
                                postprocess_match_metric=metric,
                                postprocess_match_threshold=MERGE_IOU, verbose=0,
                                batch_size=BATCH)
    return scene_mod.sahi_to_detections(res.object_prediction_list)


def _merges():
    from danlu.infer.postprocess import PostProcess

    return {"hard": PostProcess("hard", iou_threshold=MERGE_IOU, max_detections=0),
            "greedy-nmm": PostProcess("greedy-nmm", iou_threshold=MERGE_IOU, max_detections=0,
                                      match="ios")}


def sliced_rows(ckpt: Path, image: np.ndarray, gt, quick: bool) -> tuple[list, dict]:
    from danlu.infer.predictor import Predictor
    from danlu.infer.slicing import (
        SliceStats,
        cut_sides,
        merge_tiles,
        slice_windows,
        sliced_predict,
    )

    h, w = image.shape[:2]
    pred = Predictor(ckpt, device="cpu", score_threshold=SCORE, batch_size=BATCH,
                     multi_label=True)  # the peers keep every class of a box
    merges = _merges()
    windows = slice_windows(w, h, 256, OVERLAP)
    sahi = scene_mod.sahi_model(pred, SCORE)
    # warm-up on a corner: numba kernels loaded or compiled, torch's first calls done
    import importlib

    importlib.import_module("danlu.boxes.nms")._kernels()
    corner = np.ascontiguousarray(image[:600, :600])
    for m in merges.values():
        sliced_predict(pred, corner, slice_size=256, overlap=OVERLAP, merge=m)
    for kind in ("NMS", "GREEDYNMM"):
        _sahi_sliced(sahi, corner, kind)
    _sahi_sliced(scene_mod.sahi_model(pred, SCORE, native_batch=False), corner, "GREEDYNMM")
    plain_loop(pred.model, corner, slice_windows(600, 600, 256, OVERLAP), BATCH, SCORE,
               pred.transform)

    n = len(windows)
    label = f"{w:,}x{h:,} scene, {len(gt):,} objects, {n:,} tiles of 256"
    sahi_one = scene_mod.sahi_model(pred, SCORE, native_batch=False)
    runs = {
        "ours hard": lambda st: sliced_predict(pred, image, slice_size=256, overlap=OVERLAP,
                                               merge=merges["hard"], stats=st),
        "sahi NMS": lambda st: _sahi_sliced(sahi, image, "NMS"),
        "ours greedy-nmm": lambda st: sliced_predict(pred, image, slice_size=256,
                                                     overlap=OVERLAP,
                                                     merge=merges["greedy-nmm"], stats=st),
        "sahi GREEDYNMM": lambda st: _sahi_sliced(sahi, image, "GREEDYNMM"),
        "plain": lambda st: plain_loop(pred.model, image, windows, BATCH, SCORE,
                                       pred.transform),
        "sahi GREEDYNMM one": lambda st: _sahi_sliced(sahi_one, image, "GREEDYNMM"),
    }
    res: dict = {}
    found = None
    # interleaved rounds (ours, SAHI, ours, SAHI, plain, ...): a drift in the machine's load
    # hits every side; the best round counts (its output and stats are kept)
    for rnd in range(1 if quick else ROUNDS):
        for key, fn in runs.items():
            _say(f"round {rnd + 1}: {key} on {label}")
            st = SliceStats()
            t, out = _timed(lambda fn=fn, st=st: fn(st))
            if key == "plain":
                out, found = out
            if key not in res or t < res[key][0]:
                res[key] = (t, out, st if key.startswith("ours") else None)
    # agreement: our tiles saw the plain loop's boxes; without the cut-box rule our merge is
    # the peer's merge
    cuts = [cut_sides(d, win, w, h, 2.0) for d, win in zip(found, windows, strict=True)]
    zeros = [np.zeros(len(d), bool) for d in found]
    tiles_same = {k: same_boxes(res[f"ours {k}"][1], merge_tiles(found, cuts, m))
                  for k, m in merges.items()}
    nocut = {k: merge_tiles(found, zeros, m) for k, m in merges.items()}
    def counts(ours, peer):
        return f"{match_count(ours, peer):,}/{max(len(ours), len(peer)):,} boxes matched"

    agree_nms = tiles_same["hard"] and same_boxes(nocut["hard"], res["sahi NMS"][1])
    agree_g = tiles_same["greedy-nmm"] and same_boxes(nocut["greedy-nmm"],
                                                      res["sahi GREEDYNMM"][1])
    agree_g1 = tiles_same["greedy-nmm"] and same_boxes(nocut["greedy-nmm"],
                                                       res["sahi GREEDYNMM one"][1])
    agree_plain = tiles_same["hard"] and same_boxes(nocut["hard"], res["plain"][1])

    rows: list = []
    case = f"sliced {label}"
    rows.append(Row(f"{case}: hard NMS IoU 0.5 (cut rule off: "
                    f"{counts(nocut['hard'], res['sahi NMS'][1])})", res["ours hard"][0],
                    "SAHI get_sliced_prediction NMS/IOU, native batch 16", res["sahi NMS"][0],
                    agree_nms, "<= 0.5, AP50 >= SAHI's best"))
    rows.append(Row(f"{case}: greedy NMM IoS 0.5 (cut rule off: "
                    f"{counts(nocut['greedy-nmm'], res['sahi GREEDYNMM'][1])})",
                    res["ours greedy-nmm"][0],
                    "SAHI GREEDYNMM/IOS (its default), native batch 16",
                    res["sahi GREEDYNMM"][0], agree_g, "<= 0.5, AP50 >= SAHI's best"))
    one_note = ("" if agree_g1 else why_not(nocut["greedy-nmm"], res["sahi GREEDYNMM one"][1]))
    rows.append(Row(f"{case}: greedy NMM IoS 0.5 (cut rule off: "
                    f"{counts(nocut['greedy-nmm'], res['sahi GREEDYNMM one'][1])}{one_note})",
                    res["ours greedy-nmm"][0],
                    "SAHI GREEDYNMM/IOS, batch_size=16 through SAHI's own batch path "
                    "(model wrapped with perform_inference only: one slice per forward)",
                    res["sahi GREEDYNMM one"][0], agree_g1, "<= 0.5, AP50 >= SAHI's best"))
    rows.append(Row(f"{case}: hard NMS IoU 0.5 (cut rule off: "
                    f"{counts(nocut['hard'], res['plain'][1])})", res["ours hard"][0],
                    "plain batched loop + torchvision batched_nms", res["plain"][0],
                    agree_plain, ""))

    # tiles/s: the model alone on the same tiles, pre-cut; then ours without the reader thread
    _say(f"model alone on the {n} pre-cut tiles")
    t_model, outs = _model_alone(pred, image, windows, 1 if quick else ROUNDS)
    per_tile_same = all(
        same_boxes(d.translate(float(win[0]), float(win[1])), f)
        for win, d, f in zip(windows, outs, found, strict=True))
    from danlu.infer.slicing import reader_threads

    default_workers = reader_threads(pred)
    other = 1 if default_workers == 0 else 0
    _say(f"ours, hard, workers={other}")
    st1 = SliceStats()
    t_w, det_w = _timed(lambda: sliced_predict(pred, image, slice_size=256, overlap=OVERLAP,
                                               merge=merges["hard"], workers=other, stats=st1))
    ours_tps = n / res["ours hard"][0]
    model_tps = n / t_model
    w_tps = n / t_w
    rows.append(Row(f"tiles/s: ours {ours_tps:.1f} (sliced, hard, default workers="
                    f"{default_workers}) vs the model alone {model_tps:.1f} "
                    f"({ours_tps / model_tps:.2f}x); s/tile",
                    1 / ours_tps, "Predictor.predict_tensor on the pre-cut uint8 tiles, "
                    "batch 16", 1 / model_tps, per_tile_same,
                    "tiles/s >= 0.9x (ours/peer <= 1.11)"))
    rows.append(Row(f"tiles/s: ours {w_tps:.1f} with workers={other} "
                    f"({'one reader thread beside the model' if other else 'no reader thread'})"
                    f" vs the model alone ({w_tps / model_tps:.2f}x); s/tile",
                    1 / w_tps, "Predictor.predict_tensor on the pre-cut uint8 tiles, "
                    "batch 16", 1 / model_tps, same_boxes(det_w, res["ours hard"][1]),
                    "(for comparison)"))

    # metrics on the one image
    metric_rows = []
    aps = {k: coco_ap_huge(gt, v[1], w, h) for k, v in res.items()}
    best_sahi = max(("sahi NMS", "sahi GREEDYNMM"), key=lambda k: aps[k]["AP50"])
    names = {"ours hard": "ours, hard NMS 0.5 (cut-box rule)",
             "ours greedy-nmm": "ours, greedy NMM IoS 0.5 (cut-box rule)",
             "sahi NMS": "SAHI NMS/IOU 0.5 (native batch 16)",
             "sahi GREEDYNMM": "SAHI GREEDYNMM/IOS 0.5 (native batch 16)",
             "sahi GREEDYNMM one": "SAHI GREEDYNMM/IOS 0.5 (its own batch path, 1 per forward)",
             "plain": "plain loop + torchvision batched_nms"}
    _say("pycocotools cross-check of one result")
    ref = pycocotools_ap_huge(gt, res["ours hard"][1], w, h)
    same = all(abs(ref[k] - aps["ours hard"][k]) <= 1e-9 for k in ref)
    mcase = f"sliced {w:,}x{h:,} scene, {len(gt):,} objects; AP at maxDets={MAX_DETS:,}"
    for k, (t, det, st) in res.items():
        note = f"{len(det):,} boxes"
        if k == "ours hard":
            note += (f"; pycocotools COCOeval: AP50 {ref['AP50']:.6f}, AP {ref['AP']:.6f} "
                     f"({'identical' if same else 'DIFFERENT'})")
        if st is not None:
            note += (f"; model {st.seconds_model:.1f} s, read {st.seconds_read:.1f} s "
                     f"(overlapped), merge {st.seconds_merge:.2f} s, "
                     f"{st.tile_boxes:,} tile boxes, {st.dropped_cut} cut dropped, "
                     f"{st.merged_cut} merged")
        metric_rows.append(MetricRow(mcase, names[k], aps[k], seconds=t, note=note,
                                     reference=(k == best_sahi)))
    info = {"pred": pred, "found": found, "windows": windows, "aps": aps,
            "ours hard": res["ours hard"][:2],
            "best_sahi": best_sahi, "times": {k: v[0] for k, v in res.items()}}
    return rows + metric_rows, info


def _model_alone(pred, image: np.ndarray, windows, rounds: int) -> tuple[float, list]:
    """The model's own batched throughput: every window pre-cut into ``uint8`` batches of 16
    (not timed), then ``predict_tensor`` on each batch (timed; the best of ``rounds``)."""
    tiles = [torch.from_numpy(np.ascontiguousarray(image[y0:y1, x0:x1])).permute(2, 0, 1)
             .contiguous() for x0, y0, x1, y1 in windows]
    batches = [torch.stack(tiles[i:i + BATCH]) for i in range(0, len(tiles), BATCH)]
    pred.predict_tensor(batches[0])
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        outs = [d for b in batches for d in pred.predict_tensor(b)]
        best = min(best, time.perf_counter() - t0)
    return best, outs


def batch_rows(ckpt: Path, image: np.ndarray, quick: bool, b16=None) -> list:
    """``sliced_predict`` at batch 16 against batch 1: on the whole scene when ``b16`` (the
    ``(seconds, Detections)`` of the batch-16 hard-NMS run on it) is given, else on a crop
    (600 x 600 with ``quick``, 2,000 x 2,000 otherwise) with both batch sizes run here."""
    from danlu.infer.postprocess import PostProcess
    from danlu.infer.predictor import Predictor
    from danlu.infer.slicing import SliceStats, slice_windows, sliced_predict

    if b16 is None:
        side = 600 if quick else 2000
        crop = np.ascontiguousarray(image[:side, :side])
        where = f"{side:,}x{side:,} crop"
    else:
        crop = image
        where = f"whole {image.shape[1]:,}x{image.shape[0]:,} scene"
    merge = PostProcess("hard", iou_threshold=MERGE_IOU, max_detections=0)
    out = {} if b16 is None else {16: b16}
    for bs in (16, 1):
        if bs in out:
            continue
        pred = Predictor(ckpt, device="cpu", score_threshold=SCORE, batch_size=bs,
                         multi_label=True)
        sliced_predict(pred, np.ascontiguousarray(crop[:300, :300]), slice_size=256, merge=merge)
        st = SliceStats()
        _say(f"batch {bs} on the {where}")
        t = float("inf")
        for _ in range(1 if quick else ROUNDS):
            dt, det = _timed(lambda pred=pred, st=st: sliced_predict(
                pred, crop, slice_size=256, overlap=OVERLAP, merge=merge, stats=st))
            t = min(t, dt)
        out[bs] = (t, det)
    tiles = len(slice_windows(crop.shape[1], crop.shape[0], 256, OVERLAP))
    agree = same_boxes(out[16][1], out[1][1])
    m = match_count(out[16][1], out[1][1])
    note = "" if agree else why_not(out[16][1], out[1][1])
    return [Row(f"batch 16 vs batch 1: {where}, {tiles:,} tiles "
                f"({m:,}/{max(len(out[16][1]), len(out[1][1])):,} boxes matched{note})",
                out[16][0], "ours at batch 1", out[1][0], agree,
                "the same boxes (IoU >= 0.99)")]


# -- merging ---------------------------------------------------------------------------------
def crowded_candidates(n: int = 100_000, classes: int = 10, side: float = 8000.0,
                       seed: int = 0):
    """``n`` candidates clustered like the outputs of overlapping tiles (module docstring)."""
    from danlu.structures import Detections

    r = np.random.default_rng(seed)
    n_obj = n // 8
    clusters = r.uniform(200, side - 200, (max(1, n_obj // 31), 2))
    centre = clusters[r.integers(len(clusters), size=n_obj)] + r.normal(0, 60, (n_obj, 2))
    wh = r.uniform(12, 60, (n_obj, 2))
    cls = r.integers(0, classes, n_obj)
    conf = r.uniform(0.2, 1.0, n_obj)
    copies = r.integers(1, 16, n_obj)
    obj = np.repeat(np.arange(n_obj), copies)
    r.shuffle(obj)
    obj = np.resize(obj, n)
    c = centre[obj] + r.normal(0, 2, (n, 2))
    s = wh[obj] * r.normal(1, 0.04, (n, 2))
    xyxy = np.clip(np.concatenate([c - s / 2, c + s / 2], 1), 0, side).astype(np.float32)
    labels = cls[obj].copy()
    flip = r.random(n) < 0.1
    labels[flip] = r.integers(0, classes, int(flip.sum()))
    scores = np.clip(conf[obj] * r.uniform(0.7, 1.0, n), 0.1, 1.0).astype(np.float32)
    return Detections(xyxy, labels.astype(np.int64), scores=scores)


def _same_clusters(a: dict, b: dict) -> bool:
    return ({int(k): sorted(int(i) for i in v) for k, v in a.items()}
            == {int(k): sorted(int(i) for i in v) for k, v in b.items()})


def merge_rows(quick: bool, n: int | None = None) -> list:
    import torchvision
    from sahi.postprocess import backends as sahi_backends
    from sahi.postprocess.combine import GreedyNMMPostprocess, batched_greedy_nmm
    from sahi.prediction import ObjectPrediction

    from danlu import boxes
    from danlu.infer.slicing import merge_tiles

    n = n or (10_000 if quick else 100_000)
    det = crowded_candidates(n)
    merges = _merges()
    zeros = [np.zeros(n, bool)]
    tb, ts = torch.from_numpy(det.xyxy), torch.from_numpy(det.scores)
    tl = torch.from_numpy(det.labels)
    label = f"merge {n:,} crowded candidates (10 classes)"
    rows = []
    _say(label)

    t_ours = measure(lambda: merge_tiles([det], zeros, merges["hard"]), repeat=5)
    t_tv = measure(lambda: torchvision.ops.batched_nms(tb, ts, tl, MERGE_IOU), repeat=3)
    ours = merge_tiles([det], zeros, merges["hard"])
    keep = torchvision.ops.batched_nms(tb, ts, tl, MERGE_IOU).numpy()
    agree = same_boxes(ours, det[keep], iou=1.0 - 1e-6)
    rows.append(Row(f"{label}: merge_tiles, hard NMS IoU 0.5 ({len(ours):,} kept)", t_ours,
                    "torchvision.ops.batched_nms", t_tv, agree, "<= 200 ms"))

    preds = [ObjectPrediction(bbox=b, category_id=int(lab), category_name=str(lab),
                              score=float(s))
             for b, lab, s in zip(det.xyxy.tolist(), det.labels.tolist(),
                                  det.scores.tolist(), strict=True)]
    sahi_pp = GreedyNMMPostprocess(match_threshold=MERGE_IOU, match_metric="IOS",
                                   class_agnostic=False)
    t_ours = measure(lambda: merge_tiles([det], zeros, merges["greedy-nmm"]), repeat=5)
    # (SAHI writes merged predictions into the list it is given: each call gets a copy)
    sahi_pp(list(preds[:1000]))  # compile its numba kernel
    t_sahi = measure(lambda: sahi_pp(list(preds)), repeat=1, warmup=0)
    ours = merge_tiles([det], zeros, merges["greedy-nmm"])
    agree = same_boxes(ours, scene_mod.sahi_to_detections(sahi_pp(list(preds))))
    rows.append(Row(f"{label}: merge_tiles, greedy NMM IoS 0.5 ({len(ours):,} kept)", t_ours,
                    "SAHI GreedyNMMPostprocess (ObjectPrediction list)", t_sahi, agree,
                    "<= 200 ms"))

    arr = np.concatenate([det.xyxy.astype(np.float64), det.scores[:, None].astype(np.float64),
                          det.labels[:, None].astype(np.float64)], 1)

    def ours_clusters():
        return boxes.greedy_nmm(det.xyxy, det.scores, det.labels, match_metric="IOS",
                                match_threshold=MERGE_IOU)

    t_ours = measure(ours_clusters, repeat=5)
    mine = ours_clusters()
    for backend in ("numba", "numpy"):
        sahi_backends.set_postprocess_backend(backend)
        try:
            batched_greedy_nmm(arr[:500], "IOS", MERGE_IOU)
            t_peer = measure(lambda: batched_greedy_nmm(arr, "IOS", MERGE_IOU), repeat=1,
                             warmup=0)
            theirs = batched_greedy_nmm(arr, "IOS", MERGE_IOU) if quick else None
        finally:
            sahi_backends.set_postprocess_backend("auto")
        if theirs is None:
            sahi_backends.set_postprocess_backend(backend)
            try:
                theirs = batched_greedy_nmm(arr, "IOS", MERGE_IOU)
            finally:
                sahi_backends.set_postprocess_backend("auto")
        rows.append(Row(f"{label}: greedy NMM clusters, danlu.boxes.greedy_nmm", t_ours,
                        f"sahi batched_greedy_nmm ({backend} backend)", t_peer,
                        _same_clusters(mine, theirs), "<= 200 ms"))
    return rows


# -- folder prediction -------------------------------------------------------------------------
def folder_rows(ckpt: Path, quick: bool, n: int | None = None) -> list:
    from PIL import Image

    from danlu.data.synth import synthesize
    from danlu.infer.backend import score_threshold_holder
    from danlu.infer.predictor import Predictor
    from danlu.structures import Detections

    n = n or (16 if quick else 64)
    ds = synthesize("shapes", num_images=n, seed=41, image_size=(640, 480),
                    scale_range=(16, 80), encode=False)
    pred = Predictor(ckpt, device="cpu", score_threshold=SCORE, batch_size=BATCH,
                     multi_label=True)
    model, transform = pred.model, pred.transform
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, s in enumerate(ds.samples):
            p = Path(tmp) / f"{i:03d}.png"
            Image.fromarray(s.load_image()).save(p)
            paths.append(p)

        def ours():
            return pred.predict(paths, batch_size=BATCH)

        def plain():
            holder = score_threshold_holder(model)
            old, holder.score_thresh = holder.score_thresh, SCORE
            model.eval()
            out = []
            try:
                with torch.inference_mode():
                    for p in paths:
                        arr = np.asarray(Image.open(p).convert("RGB"))
                        x, frame = transform.image(arr)
                        o = model([x.float().div_(255.0)])[0]
                        d = Detections(o["boxes"].numpy(), o["labels"].numpy(),
                                       scores=o["scores"].numpy())
                        out.append(transform.back(d, frame, drop_outside=True))
            finally:
                holder.score_thresh = old
            return out

        _say(f"folder of {n} PNGs")
        t_ours = measure(ours, repeat=5, warmup=1)
        t_plain = measure(plain, repeat=5, warmup=1)
        agree = all(same_boxes(a, b) for a, b in zip(ours(), plain(), strict=True))
    return [Row(f"folder: {n} PNGs 640x480, predict(paths, batch_size=16): "
                f"{n / t_ours:.1f} vs {n / t_plain:.1f} images/s", t_ours,
                "plain loop, model one image at a time", t_plain, agree,
                ">= 2x images/s (ours/peer <= 0.5)")]


# -- suppression methods -----------------------------------------------------------------------
def nms_method_rows(ckpt: Path, quick: bool) -> list:
    from danlu.data.synth import synthesize
    from danlu.evaluate.api import evaluate
    from danlu.infer.predictor import Predictor

    splits = scene_mod.demo_splits(100 if quick else 1000)
    crowded = synthesize("shapes", num_images=10 if quick else 100, seed=31,
                         image_size=(256, 256), objects_per_image=(10, 20),
                         scale_range=(16, 56), max_overlap=0.6, encode=False)
    sets = {f"demo test split ({len(splits['test'])} images, 256 px)": splits["test"],
            f"crowded set ({len(crowded)} images, 10-20 objects, overlap <= 0.6)": crowded}
    base = Predictor(ckpt, device="cpu", score_threshold=0.001, batch_size=BATCH,
                     multi_label=True)  # AP: every class of a box, as evaluation keeps
    rows = []
    for case, ds in sets.items():
        _say(f"NMS variants on {case}")
        pairs = [base.transform.image(s.load_image()) for s in ds.samples]
        cands = []
        for i in range(0, len(pairs), BATCH):
            chunk = pairs[i:i + BATCH]
            cands += base.candidates(torch.stack([t for t, _ in chunk]))
        for method in ("hard", "soft-linear", "soft-gaussian", "iou-guided"):
            p = Predictor(ckpt, device="cpu", score_threshold=0.001, nms=method,
                          multi_label=True)

            def run(p=p, cands=cands, pairs=pairs):
                return [p.transform.back(p.finish(c), f, drop_outside=True)
                        for c, (_, f) in zip(cands, pairs, strict=True)]

            run()
            t, preds = _timed(run)
            m = evaluate(ds, preds, protocol="coco").metrics
            pp = p.postprocess
            rows.append(MetricRow(case, method, {"AP50": float(m["AP50"]),
                                                 "AP": float(m["AP"])},
                                  seconds=t, reference=(method == "hard"),
                                  note=f"IoU {pp.iou_threshold:g}, sigma {pp.sigma:g}, "
                                       f"<= {pp.max_detections} per image"))
        # test-time augmentation: whole predictions (4 passes each), against the same hard NMS
        for tta in (False, True):
            p = Predictor(ckpt, device="cpu", score_threshold=0.001, batch_size=BATCH, tta=tta,
                          multi_label=True)
            t, preds = _timed(lambda p=p, ds=ds: p.predict_dataset(ds))
            m = evaluate(ds, preds, protocol="coco").metrics
            rows.append(MetricRow(case, "hard + TTA (flip, 0.83x, 1.25x; WBF)" if tta else
                                  "hard, no TTA (whole prediction)",
                                  {"AP50": float(m["AP50"]), "AP": float(m["AP"])},
                                  seconds=t, note="time: forward passes included"))
    return rows


# -- memory ----------------------------------------------------------------------------------
@dataclass
class MemRow:
    """Peak resident memory of one tool predicting one file, in a fresh process."""

    case: str
    ours_mb: float
    ours_s: float
    peer: str
    peer_mb: float | None
    peer_s: float | None
    goal: str = ""
    note: str = ""
    peer_error: str = ""


def _child(which: str, image: Path, ckpt: Path, slice_size: int) -> dict:
    script = Path(__file__).with_name("_predict_memory.py")
    proc = subprocess.Popen([sys.executable, str(script), which, str(image), str(ckpt),
                             str(slice_size), str(BATCH), str(SCORE)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    return {"error": f"exit status {proc.returncode}: {err.strip().splitlines()[-1:]}",
            "peak_mb": None, "seconds": None}


def memory_rows(ckpt: Path, image: np.ndarray, quick: bool, side: int | None = None) -> list:
    side = side or (6000 if quick else 30_000)
    path = scene_mod.cache_dir(quick) / f"huge_{side}.tif"
    _say(f"writing / checking the {side:,}x{side:,} TIFF")
    t_write, _ = _timed(lambda: scene_mod.write_huge_tiff(path, side, image))
    slice_size = 1024
    _say("ours on the TIFF (child process)")
    ours = _child("ours", path, ckpt, slice_size)
    _say("SAHI on the TIFF (child process)")
    peer = _child("sahi", path, ckpt, slice_size)
    size_gb = path.stat().st_size / 1e9
    raw_gb = side * side * 3 / 1e9
    note = (f"{size_gb:.2f} GB on disk ({raw_gb:.2f} GB decoded), written/checked in "
            f"{t_write:.0f} s; slices of {slice_size} resized to 256, overlap 0.2, "
            f"{ours.get('tiles', '?')} tiles; after imports + model: ours "
            f"{ours.get('base_mb', float('nan')):.0f} MB, SAHI "
            f"{peer.get('base_mb', float('nan')):.0f} MB; boxes: ours {ours.get('boxes')}, "
            f"SAHI {peer.get('boxes')}")
    if "error" in ours:
        note += f"; OURS FAILED: {ours['error']}"
    return [MemRow(f"peak RSS, {side:,}x{side:,} tiled TIFF (zlib, tile 512)",
                   ours.get("peak_mb") or float("nan"), ours.get("seconds") or float("nan"),
                   "SAHI get_sliced_prediction(path)", peer.get("peak_mb"),
                   peer.get("seconds"), "<= 1.5 GB (ours)", note, peer.get("error", ""))]


# -- the run and the report --------------------------------------------------------------------
def run(quick: bool = False) -> list:
    """All rows (Row, MemRow, MetricRow) of the three tables."""
    torch.set_num_threads(os.cpu_count() or 1)
    t0 = _T0[0] = time.perf_counter()
    ckpt = scene_mod.model_checkpoint(quick)
    image, gt = scene_mod.scene(quick)
    _say(f"model {ckpt}, scene {image.shape[1]}x{image.shape[0]} with {len(gt)} objects")
    rows, info = sliced_rows(ckpt, image, gt, quick)
    rows += batch_rows(ckpt, image, quick, None if quick else info["ours hard"])
    rows += merge_rows(quick)
    rows += folder_rows(ckpt, quick)
    rows += nms_method_rows(ckpt, quick)
    rows += memory_rows(ckpt, image, quick)
    _say(f"done in {time.perf_counter() - t0:.0f} s")
    return rows


def _fmt_mb(mb: float | None) -> str:
    return "-" if mb is None or mb != mb else (f"{mb / 1024:.2f} GB" if mb >= 1024
                                               else f"{mb:.0f} MB")


def _fmt_s(s: float | None) -> str:
    return "-" if s is None or s != s else f"{s:.1f} s"


def report(rows: list, *, as_json: bool = False) -> None:
    """The timing table, the memory table and the accuracy tables."""
    from rich.table import Table

    from benchmarks._common import _console, machine, report_metrics
    from benchmarks._common import report as report_rows

    timing = [r for r in rows if isinstance(r, Row)]
    memory = [r for r in rows if isinstance(r, MemRow)]
    metrics = [r for r in rows if isinstance(r, MetricRow)]
    if as_json:
        import orjson

        doc = {"benchmark": TITLE, "machine": machine(),
               "rows": [asdict(r) | {"ratio": r.ratio, "speedup": r.speedup} for r in timing],
               "memory": [asdict(r) for r in memory],
               "metrics": [asdict(r) for r in metrics]}
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
              .decode())
        return
    report_rows(TITLE, timing)
    if memory:
        table = Table(title=f"predict: peak resident memory, one fresh process per tool — "
                            f"{machine()}")
        for col in ("case", "ours peak", "ours time", "peer", "peer peak", "peer time",
                    "ours/peer", "goal", "note"):
            table.add_column(col)
        for r in memory:
            ratio = ("-" if not r.peer_mb else f"{r.ours_mb / r.peer_mb:.3f}")
            peer = r.peer + (f" FAILED: {r.peer_error}" if r.peer_error else "")
            table.add_row(r.case, _fmt_mb(r.ours_mb), _fmt_s(r.ours_s), peer,
                          _fmt_mb(r.peer_mb), _fmt_s(r.peer_s), ratio, r.goal, r.note)
        _console().print(table)
    if metrics:
        report_metrics("predict: accuracy (Δ: against the reference row of each case: SAHI's "
                       "best merge; hard NMS)", metrics)


REPORT = report

if __name__ == "__main__":
    report(run(quick="--quick" in sys.argv), as_json="--json" in sys.argv)
