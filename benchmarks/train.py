"""Training under a wall-clock budget: fcos-tiny against Ultralytics YOLOv8n on 2 CPU cores.

The demo's data (1000 generated ``shapes`` images at 256 px, seed 0, split 80/10/10 into
train / val / test with :func:`danlu.data.split.split_dataset`) is written as a YOLO dataset for
Ultralytics. For each budget B (5 and 10 minutes):

* ours: ``danlu.train`` (fcos-tiny, batch 16, lr 2e-3, flips, ``time=B`` minutes, validation
  on the val split each epoch, ``best.pt`` kept);
* Ultralytics: ``YOLO("yolov8n.yaml")`` from scratch (no pretrained weights), its default
  recipe (mosaic, HSV, scale ... augmentation, SGD/AdamW auto, warm-up), batch 16, same image
  size, ``workers=0``, ``amp=False``, ``time=B/60`` hours (its own budget, which also includes
  its per-epoch validation), ``best.pt`` kept.

Both ``best.pt`` are evaluated on the same held-out test split with danlu's COCO evaluation
(Ultralytics' predictions: ``predict(conf=0.001)``, converted to pixel xyxy ``Detections``), so
AP50 and AP (AP50:95) are computed identically. images/s = training images seen / training
seconds (ours: optimizer steps x batch; Ultralytics: epochs begun x train images, an upper
bound as its budget may cut the last epoch); both include each tool's own per-epoch validation
in the seconds. Both train on every core (Ultralytics' default on CPU is cpu_count - 1
threads, meant to leave a core to loader workers; with ``workers=0`` it is raised to all).

Run: ``danlu bench train`` (about 31 minutes on 2 cores; ``--quick``: 64 images at 128 px and
a half-minute budget, a smoke run whose numbers mean little).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import MetricRow

TITLE = "train: held-out test AP after a wall-clock budget, fcos-tiny vs Ultralytics YOLOv8n"
METRICS = True  # rows are MetricRow: `danlu bench` prints them with report_metrics

BATCH = 16
LR = 2e-3


def _settings(quick: bool) -> dict:
    if quick:
        return {"n": 64, "size": 128, "budgets": (0.5,), "batch": 8}
    return {"n": 1000, "size": 256, "budgets": (5.0, 10.0), "batch": BATCH}


def _data(s: dict):
    from danlu.data.split import split_dataset
    from danlu.data.synth import synthesize

    size = s["size"]
    k = size / 256
    ds = synthesize("shapes", num_images=s["n"], seed=0, image_size=(size, size),
                    scale_range=(max(8, round(16 * k)), max(12, round(80 * k))), encode=False)
    parts = split_dataset(ds, (0.8, 0.1, 0.1), seed=0)
    return parts["train"], parts["val"], parts["test"]


def _test_metrics(test, preds) -> dict[str, float]:
    from danlu.evaluate.api import evaluate

    m = evaluate(test, preds, protocol="coco").metrics
    return {"AP50": float(m["AP50"]), "AP": float(m["AP"])}


def _ours(train_ds, val_ds, test_ds, s: dict, minutes: float, out: Path
          ) -> tuple[dict[str, float], float, str]:
    from danlu.infer.predictor import Predictor
    from danlu.train.api import train

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.perf_counter()
    result = train(train_ds, model="fcos-tiny", epochs=1000, out=out, val=val_ds, time=minutes,
                   img_size=s["size"], batch=s["batch"], lr=LR, seed=0, device="cpu",
                   workers=0, augment="flips", exist_ok=True, plots=False, final_eval=False,
                   progress=False, verbose=False)
    secs = time.perf_counter() - t0
    preds = Predictor(result.best, device="cpu", score_threshold=0.001,
                      multi_label=True).predict_dataset(test_ds)  # as evaluation scores it
    seen = result.steps * s["batch"]
    return (_test_metrics(test_ds, preds), seen / secs,
            f"{result.epochs} epochs, {result.steps} steps in {secs:.0f} s")


def _write_yolo(train_ds, val_ds, root: Path) -> Path:
    from danlu.data.io import save_dataset

    for name, part in (("train", train_ds), ("val", val_ds)):
        save_dataset(part, root / name, "yolo")
    dirs = {name: next(p for p in (root / name / "images").iterdir() if p.is_dir())
            for name in ("train", "val")}
    yml = root / "data.yaml"
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(train_ds.class_names))
    yml.write_text(f"train: {dirs['train']}\nval: {dirs['val']}\nnames:\n{names}",
                   encoding="utf-8")
    return yml


def _ultralytics(data_yaml: Path, n_train: int, test_ds, s: dict, minutes: float, out: Path
                 ) -> tuple[dict[str, float], float, str]:
    import numpy as np
    import ultralytics.utils.torch_utils as ul_torch
    from ultralytics import YOLO

    from danlu.structures import Detections

    # Ultralytics trains on cpu_count - 1 threads (1 of 2 cores) to leave one to its loader
    # workers; with workers=0 that core would idle, so both tools get every core.
    ul_torch.NUM_THREADS = os.cpu_count() or 1
    model = YOLO("yolov8n.yaml")
    t0 = time.perf_counter()
    model.train(data=str(data_yaml), epochs=1000, time=minutes / 60, imgsz=s["size"],
                batch=s["batch"], device="cpu", workers=0, pretrained=False, amp=False,
                plots=False, project=str(out), name="ul", exist_ok=True, seed=0,
                verbose=False)
    secs = time.perf_counter() - t0
    trainer = model.trainer
    epochs = int(trainer.epoch) + 1  # epochs begun: the last may be cut by the budget
    best = YOLO(str(trainer.best))
    preds = []
    for sample in test_ds.samples:
        bgr = np.ascontiguousarray(np.asarray(sample.load_image())[..., ::-1])
        r = best.predict(bgr, imgsz=s["size"], conf=0.001, device="cpu", verbose=False)[0]
        b = r.boxes
        preds.append(Detections(b.xyxy.numpy(), b.cls.numpy().astype(np.int64),
                                b.conf.numpy()))
    return (_test_metrics(test_ds, preds), epochs * n_train / secs,
            f"{epochs} epochs in {secs:.0f} s")


def run(quick: bool = False) -> list[MetricRow]:
    """Train both detectors under each budget and evaluate them on the test split."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    s = _settings(quick)
    train_ds, val_ds, test_ds = _data(s)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            data_yaml = _write_yolo(train_ds, val_ds, root / "yolo")
            import ultralytics  # noqa: F401
        except ImportError:
            data_yaml = None
        for minutes in s["budgets"]:
            case = (f"{minutes:g} min, {len(train_ds)}/{len(val_ds)}/{len(test_ds)} images "
                    f"{s['size']}px, batch {s['batch']}, 2 CPU cores")
            m, ips, note = _ours(train_ds, val_ds, test_ds, s, minutes, root / f"ours{minutes}")
            rows.append(MetricRow(case, "danlu fcos-tiny", m | {"images/s": ips}, note=note,
                                  reference=True))
            if data_yaml is None:
                rows.append(MetricRow(case, "ultralytics YOLOv8n: not installed", {},
                                      note="pip install ultralytics to compare"))
                continue
            m, ips, note = _ultralytics(data_yaml, len(train_ds), test_ds, s, minutes,
                                        root / f"ul{minutes}")
            rows.append(MetricRow(case, "ultralytics YOLOv8n (from scratch)",
                                  m | {"images/s": ips}, note=note))
    return rows
