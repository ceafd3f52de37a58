"""Training with missing labels: what 30% dropped annotations cost, and what the remedies win back.

On generated shapes data, :func:`danlu.data.labels.drop_labels` removes 30% of each class's
boxes from the training set (the held-out test set keeps all of them). The same detector
(``fcos-tiny``, same seed and schedule) is trained:

* on all labels (the reference);
* on the 30%-dropped labels, no remedy;
* on the dropped labels with soft sampling (``--soft-sampling``, background far from every
  labelled box weighs less in the classification loss; see :mod:`danlu.train.sampling`);
* teacher -> student: the no-remedy model pseudo-labels the training set
  (:func:`danlu.train.pseudo.pseudo_label`, score >= 0.5, IoU < 0.5 with same-class labels) and
  a new model trains on the union. The note gives how many pseudo-labels were added and how many
  of them recover a dropped box (IoU >= 0.5, same class).

Each row reports the test-set COCO AP50 and AP, their difference to the all-labels model and
the training time (after a warm-up run). Run: ``danlu bench missing-labels`` (``--quick``: a
small smoke run whose numbers mean little; the full run takes about half an hour on 2 cores).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import MetricRow, shapes_train_test

TITLE = "missing-labels: held-out AP with 30% of the training labels dropped"
METRICS = True  # rows are MetricRow: `danlu bench` prints them with report_metrics

DROP = 0.3
SOFT = "0:0.25,0.5:1"
PSEUDO_SCORE = 0.5


def _settings(quick: bool) -> dict:
    if quick:
        return {"n_train": 48, "n_test": 16, "size": 64, "epochs": 8, "batch": 8}
    return {"n_train": 400, "n_test": 100, "size": 128, "epochs": 20, "batch": 16}


def _train(ds, out: Path, s: dict, **options) -> tuple[Path, float]:
    from danlu.train.api import train

    t0 = time.perf_counter()
    result = train(ds, model="fcos-tiny", epochs=s["epochs"], out=out, batch=s["batch"],
                   img_size=s["size"], device="cpu", seed=0, val_split=0, plots=False,
                   final_eval=False, verbose=False, progress=False, exist_ok=True,
                   warmup_epochs=min(1.0, s["epochs"] / 4), **options)
    return result.best, time.perf_counter() - t0


def _test_metrics(checkpoint: Path, test) -> dict[str, float]:
    from danlu.evaluate.api import evaluate
    from danlu.infer.predictor import Predictor

    preds = Predictor(checkpoint, device="cpu", score_threshold=0.01,
                      multi_label=True).predict_dataset(test)  # as evaluation scores it
    m = evaluate(test, preds, protocol="coco").metrics
    return {"AP50": float(m["AP50"]), "AP": float(m["AP"])}


def _recovered(union, full, dropped) -> tuple[int, int]:
    """(pseudo-labels added, of which match a dropped box: IoU >= 0.5, same class)."""
    from danlu.train.pseudo import new_boxes

    added = hits = 0
    for u, f, d in zip(union.samples, full.samples, dropped.samples, strict=True):
        pseudo = u.detections[u.detections.flag("pseudo")]
        added += len(pseudo)
        if not len(pseudo):
            continue
        # the boxes that were dropped: full labels that the dropped set lacks
        lost = f.detections[~_present(f.detections, d.detections)]
        if len(lost):
            scored = pseudo.with_scores(np.ones(len(pseudo), np.float32))
            hits += int((~new_boxes(lost, scored, 0.0, 0.5)).sum())
    return added, hits


def _present(full, kept) -> np.ndarray:
    if not len(kept):
        return np.zeros(len(full), bool)
    same = (full.xyxy[:, None, :] == kept.xyxy[None, :, :]).all(axis=2)
    return same.any(axis=1)


def run(quick: bool = False) -> list[MetricRow]:
    """Train the four models and evaluate them on the held-out set; see the docstring."""
    from danlu.data.labels import drop_labels
    from danlu.infer.predictor import Predictor
    from danlu.train.pseudo import pseudo_label

    s = _settings(quick)
    full, test = shapes_train_test(s)
    dropped = drop_labels(full, DROP, seed=0)
    case = (f"{len(full)} train / {len(test)} test images {s['size']}px, fcos-tiny, "
            f"{s['epochs']} epochs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _train(full.subset(range(4)), root / "warmup", dict(s, epochs=1, batch=4))  # JIT, caches
        best, secs = _train(full, root / "all", s)
        rows.append(MetricRow(case, "all labels", _test_metrics(best, test), secs,
                              f"{full.num_boxes} boxes", reference=True))
        teacher, secs = _train(dropped, root / "none", s)
        rows.append(MetricRow(case, f"{DROP:.0%} dropped, no remedy",
                              _test_metrics(teacher, test), secs,
                              f"{dropped.num_boxes} boxes"))
        best, secs = _train(dropped, root / "soft", s, soft_sampling=SOFT)
        rows.append(MetricRow(case, f"{DROP:.0%} dropped, soft sampling",
                              _test_metrics(best, test), secs, f"weight {SOFT!r}"))
        t0 = time.perf_counter()
        union = pseudo_label(Predictor(teacher, device="cpu"), dropped, score=PSEUDO_SCORE,
                             iou=0.5)
        label_s = time.perf_counter() - t0
        added, hits = _recovered(union, full, dropped)
        best, secs = _train(union, root / "student", s)
        lost = full.num_boxes - dropped.num_boxes
        rows.append(MetricRow(case, f"{DROP:.0%} dropped, teacher -> student",
                              _test_metrics(best, test), secs + label_s,
                              f"{added} pseudo-labels (score >= {PSEUDO_SCORE}), {hits} of "
                              f"{lost} dropped boxes recovered"))
    return rows
