"""Training throughput: one epoch of fcos-tiny on synthetic shapes.

Rows:

* ours (``danlu.train``: data pipeline, EMA, flips, schedule, checkpoints, progress) against a
  plain hand-written PyTorch loop over the same model, data and batch size (no EMA, no
  augmentation, no checkpoint): the ratio is the trainer's overhead. "agree" means both
  lowered the training loss.
* ours against Ultralytics YOLOv8n trained from scratch on the same images (written as a YOLO
  dataset) at the same size, batch and epoch count, when ``ultralytics`` is installed; otherwise
  the row says the peer is not installed. The models differ, so this compares the cost of an
  epoch, not accuracy.

Run: ``danlu bench train`` (``--quick``: 32 images at 128 px).
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._common import Row

TITLE = "train: one epoch of fcos-tiny (seconds)"


def _data(quick: bool):
    from danlu.data.synth import synthesize

    n, size = (32, 128) if quick else (320, 256)
    s = size / 256
    ds = synthesize("shapes", num_images=n, seed=0, image_size=(size, size),
                    scale_range=(max(8, round(16 * s)), round(80 * s)), encode=False)
    return ds, size


def _ours(ds, size: int, batch: int, out: Path) -> tuple[float, bool]:
    from danlu.train.api import train
    from danlu.train.callbacks import Callback

    losses: list[float] = []

    class Keep(Callback):
        def on_step(self, trainer, logs):
            losses.append(logs["loss"])

    t0 = time.perf_counter()
    train(ds, epochs=1, out=out, batch=batch, img_size=size, device="cpu", val_split=0,
          plots=False, final_eval=False, warmup_epochs=0.2, callbacks=[Keep()], verbose=False,
          progress=False, exist_ok=True)
    dt = time.perf_counter() - t0
    return dt, _lowered(losses)


def _plain(ds, size: int, batch: int) -> tuple[float, bool]:
    from danlu.models import build_model

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = build_model("fcos-tiny", num_classes=len(ds.class_names), img_size=size).train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    images = [torch.from_numpy(s.load_image()).permute(2, 0, 1) for s in ds.samples]
    targets = [s.detections.to_torch() for s in ds.samples]
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    losses = []
    for i in range(0, len(order) - batch + 1, batch):
        idx = order[i:i + batch]
        x = [images[j].float() / 255 for j in idx]
        t = [{"boxes": targets[j]["boxes"], "labels": targets[j]["labels"]} for j in idx]
        loss = sum(model(x, t).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        losses.append(float(loss))
    return time.perf_counter() - t0, _lowered(losses)


def _lowered(losses: list[float]) -> bool:
    if len(losses) < 2 or not all(math.isfinite(v) for v in losses):
        return False
    k = max(1, len(losses) // 4)
    return sum(losses[-k:]) / k < sum(losses[:k]) / k


def _ultralytics(ds, size: int, batch: int, root: Path) -> float | None:
    try:
        from ultralytics import YOLO
    except ImportError:
        return None
    from danlu.data.io import save_dataset

    data = save_dataset(ds, root / "yolo", "yolo")
    t0 = time.perf_counter()
    YOLO("yolov8n.yaml").train(data=str(data / "data.yaml"), epochs=1, imgsz=size, batch=batch,
                               device="cpu", workers=0, project=str(root / "ul"), plots=False,
                               val=False, verbose=False, amp=False)
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[Row]:
    """The rows of the table; see the module docstring."""
    ds, size = _data(quick)
    batch = 8 if quick else 16
    case = f"1 epoch, {len(ds)} images {size}px, batch {batch}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ours_s, ours_ok = _ours(ds, size, batch, Path(tmp) / "run")
        plain_s, plain_ok = _plain(ds, size, batch)
        rows.append(Row(case, ours_s, "plain PyTorch loop, same model", plain_s,
                        ours_ok and plain_ok, "overhead of EMA, flips, checkpoints"))
        ul = _ultralytics(ds, size, batch, Path(tmp))
        if ul is None:
            rows.append(Row(case, ours_s, "ultralytics YOLOv8n: peer not installed",
                            float("nan"), False, "pip install ultralytics to compare"))
        else:
            rows.append(Row(case, ours_s, "ultralytics YOLOv8n (from scratch)", ul, True,
                            "cost per epoch; models differ"))
    return rows
