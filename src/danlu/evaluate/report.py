"""Readable evaluation reports: per-class AP table, PR-curve and confusion-matrix PNGs, and one
self-contained HTML page (:mod:`danlu.evaluate.page`, written atomically like every file here)
with a gallery of the images with the most errors.

Plots use matplotlib's Agg backend (no display needed). The HTML embeds every image as a data
URI, so the one file can be mailed or archived.

Example:
    >>> import numpy as np, tempfile
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> from danlu.evaluate import evaluate
    >>> gt = Dataset([Sample(None, 64, 64, Detections([[8, 8, 40, 40]], [0]), id=0)], ["cat"])
    >>> preds = [Detections([[9, 8, 40, 41]], [0], scores=[0.9])]
    >>> out = write_report(evaluate(gt, preds), gt, preds, tempfile.mkdtemp())
    >>> sorted(p.name for p in out.parent.iterdir())[:3]
    ['confusion_matrix.png', 'gallery', 'metrics.json']
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from danlu.data._atomic import atomic_open, write_bytes_atomic
from danlu.evaluate._common import align_predictions
from danlu.evaluate.confusion import ConfusionMatrix, confusion_matrix
from danlu.evaluate.page import params_table, short_number, write_html_page
from danlu.evaluate.result import EvalResult
from danlu.structures import Dataset, Detections, Sample


def per_class_rows(result: EvalResult) -> list[tuple[str, float, int]]:
    """``(class, AP, ground-truth count)`` per class, in label order (AP NaN without GT)."""
    return [(name, result.per_class.get(name, math.nan), result.num_gt.get(name, 0))
            for name in result.class_names]


def mean_curve(result: EvalResult, points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """The mean PR curve over classes with ground truth: each class's precision envelope
    (``max precision at recall >= r``, 0 past its last recall) sampled at ``points`` recalls."""
    grid = np.linspace(0.0, 1.0, points)
    rows = []
    for name in result.class_names:
        rec, prec = result.curves.get(name, (np.zeros(0), np.zeros(0)))
        if result.num_gt.get(name, 0) == 0 or len(rec) == 0:
            continue
        prec = np.nan_to_num(np.asarray(prec, float), nan=0.0)
        env = np.maximum.accumulate(prec[::-1])[::-1]
        idx = np.searchsorted(rec, grid, side="left")
        rows.append(np.where(idx < len(rec), env[np.minimum(idx, len(rec) - 1)], 0.0))
    return grid, (np.mean(rows, axis=0) if rows else np.zeros(points))


def plot_pr_curves(result: EvalResult, path: str | Path, *, max_classes: int = 40) -> Path:
    """PR curves as a PNG: the mean curve first, then one panel per class (up to
    ``max_classes``, the most frequent first)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    names = sorted(result.class_names, key=lambda n: -result.num_gt.get(n, 0))[:max_classes]
    panels = 1 + len(names)
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.9 * rows), squeeze=False)
    key, value = result.main_metric
    if result.protocol == "coco":  # the curves are at IoU 0.5: show the matching number
        key, value = "AP50", result.AP50
    r, p = mean_curve(result)
    ax = axes[0][0]
    ax.plot(r, p, color="black", lw=2)
    ax.fill_between(r, p, alpha=0.15, color="black")
    ax.set_title(f"mean over classes\n{key} = {value:.3f}", fontsize=10)
    for k, name in enumerate(names, start=1):
        ax = axes[k // cols][k % cols]
        rec, prec = result.curves.get(name, (np.zeros(0), np.zeros(0)))
        if len(rec):
            colour = f"C{k % 10}"
            if result.protocol == "coco":  # already the interpolated (envelope) precision
                ax.plot(rec, prec, color=colour, lw=1.5)
            else:  # the raw curve, faint, under its envelope (what the all-point AP integrates)
                ax.plot(rec, prec, color=colour, lw=1, alpha=0.35)
                env = np.maximum.accumulate(np.asarray(prec)[::-1])[::-1]
                ax.plot(rec, env, color=colour, lw=1.5, drawstyle="steps-pre")
        ap = result.per_class.get(name, math.nan)
        ap_text = "no GT" if math.isnan(ap) else f"AP {ap:.3f}"
        if result.protocol == "coco" and not math.isnan(ap):
            ap_text = f"AP@[.5:.95] {ap:.3f}"
        ax.set_title(f"{name}\n{ap_text}, {result.num_gt.get(name, 0)} GT", fontsize=9)
    for k in range(panels):
        ax = axes[k // cols][k % cols]
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
        if k % cols == 0:
            ax.set_ylabel("precision", fontsize=8)
        if k // cols == rows - 1 or k + cols >= panels:
            ax.set_xlabel("recall", fontsize=8)
    for k in range(panels, rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"Precision-recall ({result.protocol})", fontsize=12)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def plot_confusion_matrix(cm: ConfusionMatrix, path: str | Path, *,
                          max_classes: int = 40) -> Path:
    """The confusion matrix as a PNG: colour is the share of each true class's row, the
    numbers are counts. With many classes only the ``max_classes`` busiest are drawn."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    m = cm.matrix
    c = len(cm.class_names)
    keep = np.arange(c)
    if c > max_classes:
        busy = m[:c].sum(1) + m[:, :c].sum(0)
        keep = np.sort(np.argsort(-busy, kind="stable")[:max_classes])
    idx = np.concatenate([keep, [c]])
    sub = m[np.ix_(idx, idx)]
    labels = [cm.labels[i] for i in idx]
    share = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    n = len(idx)
    size = max(4.5, 0.45 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if sub[i, j]:
                    ax.text(j, i, str(sub[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.6 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(f"Confusion matrix (IoU >= {short_number(cm.iou)}, "
                 f"score >= {short_number(cm.score)})\n"
                 "last row: false alarms; last column: misses", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)
    return path


def _image_of(sample: Sample) -> np.ndarray:
    """The sample's pixels, or a grey canvas of its size when the image cannot be read."""
    try:
        if sample.image is not None:
            return sample.load_image()
    except Exception:  # noqa: BLE001 - a missing image must not sink the report
        pass
    return np.full((max(int(sample.height), 1), max(int(sample.width), 1), 3), 60, np.uint8)


def draw_error_panel(sample: Sample, pred: Detections, class_names: Sequence[str], *,
                     score: float, max_side: int = 480) -> np.ndarray:
    """Ground truth (left) beside the predictions scoring ``>= score`` (right), as one RGB
    array, drawn with :func:`danlu.data.show.draw_detections`."""
    from danlu.data.show import draw_detections

    image = _image_of(sample)
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        from PIL import Image

        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = np.asarray(Image.fromarray(image).resize(size))
    g = sample.detections.scale(scale, scale)
    p = pred.filter(min_score=score).scale(scale, scale) if len(pred) else pred
    left = draw_detections(image, g, class_names)
    right = draw_detections(image, p, class_names)
    gap = np.full((left.shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


_KIND_CODES = {"false positives": "fp", "false negatives": "fn"}


def error_picks(cm: ConfusionMatrix, gallery: int) -> list[tuple[int, list[str]]]:
    """The gallery's images as ``(sample index, reasons)``: the ``gallery`` images with the most
    false positives, then the ``gallery`` with the most false negatives (only images with
    some). An image among both appears once, at its first place, with both reasons."""
    reasons: dict[int, list[str]] = {}
    for kind, counts in (("false positives", cm.false_positives),
                         ("false negatives", cm.false_negatives)):
        order = np.argsort(-counts, kind="stable")
        for i in order[:max(gallery, 0)]:
            if counts[i] > 0:
                reasons.setdefault(int(i), []).append(kind)
    return list(reasons.items())


def _count(n: int, noun: str) -> str:
    """``"1 false positive"``, ``"3 false positives"``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def write_report(result: EvalResult, gt: Dataset, predictions: Dataset | Sequence[Detections],
                 out_dir: str | Path, *, iou: float = 0.5, score: float = 0.25,
                 gallery: int = 8) -> Path:
    """Write a full report into ``out_dir`` and return the path of its ``report.html``.

    Files: ``metrics.json`` (``result.to_dict(curves=True)`` plus the confusion matrix),
    ``pr_curves.png``, ``confusion_matrix.png`` (at ``iou`` / ``score``), ``gallery/*.png``
    (:func:`error_picks`: the ``gallery`` images with the most false positives, then those with
    the most false negatives, each image once; named ``NN_fp.png``, ``NN_fn.png`` or
    ``NN_fp_fn.png`` by why it was chosen) and ``report.html``, which embeds all of them.
    Parameters on the page are written by :func:`danlu.evaluate.page.param_text`.
    """
    import orjson
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    preds = align_predictions(gt, predictions)
    cm = confusion_matrix(gt, preds, iou=iou, score=score)
    doc = result.to_dict(curves=True)
    doc["confusion_matrix"] = cm.to_dict()
    write_bytes_atomic(out / "metrics.json", orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY))
    pr_png = plot_pr_curves(result, out / "pr_curves.png")
    cm_png = plot_confusion_matrix(cm, out / "confusion_matrix.png")

    gallery_dir = out / "gallery"
    gallery_dir.mkdir(exist_ok=True)
    for old in gallery_dir.glob("[0-9][0-9]_f[pn]*.png"):  # an earlier report's tiles
        old.unlink()
    tiles = []
    for n, (i, kinds) in enumerate(error_picks(cm, gallery)):
        sample = gt.samples[i]
        panel = draw_error_panel(sample, preds[i], gt.class_names, score=score)
        png = gallery_dir / f"{n:02d}_{'_'.join(_KIND_CODES[k] for k in kinds)}.png"
        with atomic_open(png, "wb") as f:
            Image.fromarray(panel).save(f, format="PNG")
        tiles.append((kinds, sample, int(cm.false_positives[i]), int(cm.false_negatives[i]),
                      png))

    return write_html_page(out / "report.html", f"danlu evaluation: {result.protocol}",
                           _html(result, cm, pr_png, cm_png, tiles, iou, score))


def _fmt(v: float) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _html(result: EvalResult, cm: ConfusionMatrix, pr_png: Path, cm_png: Path,
          tiles: list, iou: float, score: float) -> str:
    e = html.escape
    key, value = result.main_metric
    metric_rows = "".join(f"<tr><td>{e(k)}</td><td>{_fmt(v)}</td></tr>"
                          for k, v in result.metrics.items())
    class_rows = []
    for name, ap, n in sorted(per_class_rows(result), key=lambda r: (math.isnan(r[1]), -r[1]
                                                                      if not math.isnan(r[1])
                                                                      else 0)):
        width = 0 if math.isnan(ap) else max(0.0, ap) * 200
        class_rows.append(f"<tr><td>{e(name)}</td><td>{_fmt(ap)}</td><td>{n}</td>"
                          f"<td style='text-align:left'><span class='bar' "
                          f"style='width:{width:.0f}px'></span></td></tr>")
    gallery = []
    for kinds, sample, fp, fn, png in tiles:
        why = " and ".join(f"the most {k}" for k in kinds)
        gallery.append(f"<div class='tile'><p><b>{e(str(sample.id))}</b> — "
                       f"{_count(fp, 'false positive')}, {_count(fn, 'false negative')}; "
                       f"among the images with {e(why)} "
                       f"(left: ground truth, right: predictions with score &ge; "
                       f"{short_number(score)})</p>"
                       f"<img src='{_png_data_uri(png)}' alt='{e(str(sample.id))}'></div>")
    return f"""<h1>Evaluation — {e(result.protocol)}: {e(key)} = {_fmt(value)}</h1>
<p>{len(result.class_names)} classes, {sum(result.num_gt.values())} counted ground-truth boxes.</p>
<h2>Metrics</h2><table class="metrics"><tr><th>metric</th><th>value</th></tr>{metric_rows}</table>
<h2>Parameters</h2>{params_table(result.params)}
<h2>Per-class AP</h2>
<table><tr><th>class</th><th>AP</th><th>GT</th><th></th></tr>{''.join(class_rows)}</table>
<h2>Precision-recall curves</h2><img src="{_png_data_uri(pr_png)}" alt="PR curves">
<h2>Confusion matrix</h2>
<p>Predictions with score &ge; {short_number(score)} matched to ground truth at IoU &ge;
{short_number(iou)} across classes.
</p><img src="{_png_data_uri(cm_png)}" alt="confusion matrix">
<h2>Images with the most errors</h2>
{''.join(gallery) if gallery else '<p>No false positives or false negatives.</p>'}"""


__all__ = ["write_report", "plot_pr_curves", "plot_confusion_matrix", "per_class_rows",
           "mean_curve", "draw_error_panel", "error_picks"]
