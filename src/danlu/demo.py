"""The embedded default: data -> training -> evaluation -> report, with nothing on disk first.

:func:`run_demo` synthesizes the ``shapes`` dataset (circles, squares, triangles, stars on
textured backgrounds), splits it train/val/test, trains ``fcos-tiny`` with a time budget,
evaluates ``best.pt`` on the held-out test split, draws predictions on held-out images and
writes ``report.html`` and ``metrics.json`` into ``out``. ``danlu demo --out DIR`` (and
``make demo``) runs it.

Files in ``out``: ``report.html``, ``metrics.json`` (``AP50``, ``AP`` ... of the test split,
timings), ``train/`` (the run: checkpoints, results.csv, plots, eval of the val split),
``eval/`` (the test-split evaluation report), ``pictures/`` (predictions drawn on test images).

Example:
    >>> from danlu.demo import run_demo                                   # doctest: +SKIP
    >>> m = run_demo("runs/demo")       # about 10 minutes on 2 CPU cores  # doctest: +SKIP
    >>> m["AP50"], m["AP"]                                                # doctest: +SKIP
"""

from __future__ import annotations

import html
import platform
import time
from pathlib import Path
from typing import Any

import orjson


def run_demo(out: str | Path, *, num_images: int = 1000, epochs: int = 15,
             time_minutes: float | None = 6.5, img_size: int = 256, batch: int = 16,
             lr: float = 2e-3, seed: int = 0, device: str = "auto", workers: int = 0,
             pictures: int = 12, progress: bool | None = None, verbose: bool = True
             ) -> dict[str, Any]:
    """Run the whole demo; returns the ``metrics.json`` document.

    Args:
        out: output folder (created; an earlier demo there is replaced).
        num_images: shapes images to synthesize (split 80/10/10 into train/val/test).
        epochs: the most epochs to train; time_minutes: the training time budget (None: none).
        img_size: image side: images are synthesized at this size and trained at it.
        batch, lr, seed, device, workers: training options (see :class:`TrainConfig`).
        pictures: how many test images to draw predictions on.
    """
    import numpy as np
    from PIL import Image

    from danlu.data.show import draw_detections
    from danlu.data.split import split_dataset
    from danlu.data.synth import synthesize
    from danlu.infer.postprocess import one_label_per_box
    from danlu.infer.predictor import Predictor
    from danlu.train.api import train
    from danlu.train.report import write_evaluation

    t0 = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    say = _say if verbose else (lambda _msg: None)

    # 1. data
    s = img_size / 256
    ds = synthesize("shapes", num_images=num_images, seed=seed, image_size=(img_size, img_size),
                    scale_range=(max(8, round(16 * s)), max(12, round(80 * s))), encode=False)
    parts = split_dataset(ds, (0.8, 0.1, 0.1), seed=seed)
    train_ds, val_ds, test_ds = parts["train"], parts["val"], parts["test"]
    t_data = time.monotonic() - t0
    say(f"demo: {len(ds)} shapes images ({len(train_ds)} train, {len(val_ds)} val, "
        f"{len(test_ds)} test, {ds.num_boxes} boxes) in {t_data:.1f}s")

    # 2. training
    t1 = time.monotonic()
    result = train(train_ds, model="fcos-tiny", epochs=epochs, out=out / "train", val=val_ds,
                   time=time_minutes, img_size=img_size, batch=batch, lr=lr, seed=seed,
                   device=device, workers=workers, augment="flips", exist_ok=True,
                   progress=progress, verbose=verbose)
    t_train = time.monotonic() - t1

    # 3. evaluation of best.pt on the held-out test split
    t2 = time.monotonic()
    # scored as training validation scores (every class per box); drawn with one label a box
    predictor = Predictor(result.best, device=device, score_threshold=0.05, multi_label=True)
    preds = predictor.predict_dataset(test_ds)
    ev = write_evaluation(result.best, test_ds, out / "eval", predictions=preds)
    t_eval = time.monotonic() - t2

    # 4. pictures: predictions on held-out images
    pic_dir = out / "pictures"
    pic_dir.mkdir(exist_ok=True)
    pic_names = []
    for i, sample in enumerate(test_ds.samples[:pictures]):
        image = sample.load_image()
        det = one_label_per_box(preds[i].filter(min_score=0.3))
        name = f"{i:02d}_{sample.id}.png"
        Image.fromarray(draw_detections(np.asarray(image), det, test_ds.class_names)).save(
            pic_dir / name)
        pic_names.append(name)

    total = time.monotonic() - t0
    doc: dict[str, Any] = {
        "split": "test", "images": len(test_ds), "boxes": test_ds.num_boxes,
        **{k: float(v) for k, v in ev.metrics.items()},
        "per_class": {k: (None if v != v else float(v)) for k, v in ev.per_class.items()},
        "val_AP50": result.metrics.get("AP50"), "val_AP": result.metrics.get("AP"),
        "epochs": result.epochs, "steps": result.steps, "stop_reason": result.stop_reason,
        "train_images": len(train_ds), "img_size": img_size, "device": str(predictor.device),
        "time_s": {"data": round(t_data, 1), "train": round(t_train, 1),
                   "eval": round(t_eval, 1), "total": round(total, 1)},
        "machine": f"{platform.machine()}, Python {platform.python_version()}",
        "checkpoint": str(result.best),
    }
    from danlu.data._atomic import write_bytes_atomic

    write_bytes_atomic(out / "metrics.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    _write_report(out, ev, doc, pic_names)
    say(f"demo: test AP50 {doc['AP50']:.3f} AP {doc['AP']:.3f} after {result.epochs} epochs; "
        f"total {total / 60:.1f} min")
    say(f"report: {out / 'report.html'}")
    return doc


def _write_report(out: Path, ev: Any, doc: dict[str, Any], pictures: list[str]) -> None:
    from danlu.evaluate.page import write_html_report

    t = doc["time_s"]
    summary = (f"<p>Held-out test split: {doc['images']} images, {doc['boxes']} boxes. "
               f"Trained {doc['epochs']} epochs ({doc['steps']} steps, stopped: "
               f"{html.escape(str(doc['stop_reason']))}) on {html.escape(doc['device'])}. "
               f"Time: data {t['data']} s, training {t['train']} s, evaluation {t['eval']} s, "
               f"total {t['total']} s.</p>")
    curves = "".join(f'<img src="{p}" alt="{p}">' for p in (
        "train/plots/loss.png", "eval/pr_curves.png", "eval/per_class_ap.png")
        if (out / p).is_file())
    grid = "".join(f'<img src="pictures/{html.escape(n)}" alt="{html.escape(n)}">'
                   for n in pictures)
    links = ('<p>More: <a href="eval/report.html">test-split evaluation report</a> '
             '(confusion matrix, error gallery), <a href="train/eval/report.html">validation '
             'report</a>, <a href="train/results.csv">results.csv</a>.</p>')
    write_html_report(out / "report.html", "danlu demo: fcos-tiny on synthetic shapes", ev,
                      sections=[("Run", summary + links), ("Curves", curves),
                                ("Predictions on held-out images", f'<div class="grid">{grid}'
                                 "</div>")])


def _say(message: str) -> None:
    import sys

    print(message, file=sys.stderr, flush=True)


__all__ = ["run_demo"]
