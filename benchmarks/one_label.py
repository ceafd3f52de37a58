"""One label per box (``danlu predict``'s default) against every class above the threshold
(``multi_label=True``, what evaluation uses): held-out COCO AP, and what each returns.

Dense detectors (FCOS, RetinaNet) score every class at every location, so one object often
comes back as the same box under several classes; class-aware NMS keeps them all. With one
label per box (:func:`danlu.infer.postprocess.one_label_per_box`: class-agnostic NMS at
IoU > 0.7 after the class-aware one) only the best class stays.

On generated shapes data, ``fcos-tiny`` (12 and 24 epochs: a weaker and a better classifier)
and ``retinanet-tiny`` (12 epochs) are trained (same data and seed) and the held-out set is
predicted both ways, at the evaluation threshold
(score >= 0.001) and at ``danlu predict``'s default (0.25). Each row gives COCO AP50 and AP,
their difference to the multi-label row of its case, and in the note the boxes per image and
the cross-class duplicates per image of the multi-label output (a box whose IoU with a
better-scoring box of another class is > 0.7; the share of those with IoU >= 0.99 says how
many are the very same box). Run: ``danlu bench one-label`` (``--quick``: fcos-tiny only, on
a small set; its numbers mean little; the full run takes about 10 minutes on 2 cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import MetricRow, shapes_train_test

TITLE = "one-label: one label per box (predict) vs every class above the threshold (eval)"
METRICS = True  # rows are MetricRow: `danlu bench` prints them with report_metrics

THRESHOLDS = (0.001, 0.25)  # evaluation's and danlu predict's default score thresholds


def _settings(quick: bool) -> dict:
    if quick:
        return {"n_train": 48, "n_test": 16, "size": 64, "batch": 8,
                "models": (("fcos-tiny", 4),)}
    return {"n_train": 300, "n_test": 100, "size": 128, "batch": 16,
            "models": (("fcos-tiny", 12), ("fcos-tiny", 24), ("retinanet-tiny", 12))}


def train_model(ds, name: str, epochs: int, out: Path, s: dict) -> tuple[Path, float]:
    """``best.pt`` of ``name`` trained ``epochs`` on ``ds`` with the benchmark's settings,
    and the seconds it took."""
    from danlu.train.api import train

    t0 = time.perf_counter()
    result = train(ds, model=name, epochs=epochs, out=out, batch=s["batch"],
                   img_size=s["size"], device="cpu", seed=0, val_split=0, plots=False,
                   final_eval=False, verbose=False, progress=False, exist_ok=True)
    return result.best, time.perf_counter() - t0


def duplicates(det, iou: float = 0.7) -> tuple[int, int]:
    """(boxes whose IoU with a better-scoring box of another class is > ``iou``, of which
    IoU >= 0.99) in one image's detections (brute force, torchvision's box_iou)."""
    import torch
    import torchvision

    if len(det) < 2:
        return 0, 0
    m = torchvision.ops.box_iou(torch.from_numpy(det.xyxy), torch.from_numpy(det.xyxy)).numpy()
    better = det.scores[None, :] > det.scores[:, None]  # [i, j]: j scores higher than i
    other = det.labels[None, :] != det.labels[:, None]
    worst = np.where(better & other, m, 0.0).max(axis=1)
    return int((worst > iou).sum()), int((worst >= 0.99).sum())


def measure(checkpoint: Path, test, case: str) -> list[MetricRow]:
    """The rows of one model: for each threshold, multi-label (reference) and one label."""
    from danlu.evaluate.api import evaluate
    from danlu.infer.predictor import Predictor

    rows = []
    for thr in THRESHOLDS:
        for multi in (True, False):
            p = Predictor(checkpoint, device="cpu", score_threshold=thr, multi_label=multi)
            t0 = time.perf_counter()
            preds = p.predict_dataset(test)
            secs = time.perf_counter() - t0
            m = evaluate(test, preds, protocol="coco").metrics
            n = max(1, len(preds))
            note = f"{sum(len(d) for d in preds) / n:.1f} boxes/img"
            if multi:
                dup = np.array([duplicates(d) for d in preds]).reshape(-1, 2).sum(axis=0)
                note += (f", {dup[0] / n:.1f} cross-class duplicates/img "
                         f"({dup[1] / max(1, dup[0]):.0%} the very same box)")
            rows.append(MetricRow(f"{case}, score >= {thr:g}",
                                  "multi-label (eval)" if multi else "one label (predict)",
                                  {"AP50": float(m["AP50"]), "AP": float(m["AP"])}, secs,
                                  note, reference=multi))
    return rows


def run(quick: bool = False) -> list[MetricRow]:
    """Train each model, then predict the held-out set both ways; see the docstring."""
    s = _settings(quick)
    train, test = shapes_train_test(s)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, epochs in s["models"]:
            best, secs = train_model(train, name, epochs, Path(tmp) / f"{name}_{epochs}", s)
            case = (f"{name} ({len(train)} train / {len(test)} test {s['size']}px, "
                    f"{epochs} epochs, {secs:.0f} s)")
            rows += measure(best, test, case)
    return rows
