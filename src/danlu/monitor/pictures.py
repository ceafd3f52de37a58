"""The monitor's pictures as PNG bytes: the loss curve (for ``/plot`` and ``/api/plot.png``) and
the sample predictions drawn on validation images (``/api/samples.png``).

Both are drawn in the thread that asks for them (a server or chat thread), never in the
training thread, with matplotlib's object API (a ``Figure`` and an Agg canvas of its own: no
pyplot state, so two threads can draw at once).

Example:
    >>> png = loss_curve_png([{"step": s, "losses": {"loss": 1 / s}} for s in range(1, 20)])
    >>> png[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: longer side of each sample picture in the grid, pixels
SAMPLE_SIDE = 320


def loss_curve_png(points: Sequence[dict[str, Any]], epochs: Sequence[dict[str, Any]] = (),
                   title: str = "") -> bytes:
    """Training losses per step (the total in bold) and, when there are epoch rows with
    validation numbers, val AP / mAP per epoch on a second axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    names: list[str] = []
    for p in points:
        names += [k for k in p.get("losses", {}) if k not in names]
    steps = [p["step"] for p in points]
    for name in names:
        ys = [p.get("losses", {}).get(name, math.nan) for p in points]
        ax.plot(steps, ys, label=name, lw=2 if name == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if names:
        ax.legend(fontsize=8, loc="upper right")
    metric = next((k for k in ("AP", "mAP", "AP50") if any(_finite(r.get(k)) for r in epochs)),
                  None)
    if metric is not None:
        right = ax.twinx()
        xs = [r.get("step", r.get("epoch")) for r in epochs]
        right.plot(xs, [_num(r.get(metric)) for r in epochs], "o--", color="tab:green",
                   label=f"val {metric}")
        right.set_ylabel(f"val {metric}")
        right.set_ylim(0, 1)
        right.legend(fontsize=8, loc="upper center")
    if title:
        ax.set_title(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _finite(v: Any) -> bool:
    return math.isfinite(_num(v))


def samples_png(images: Sequence[np.ndarray], detections: Sequence[Any],
                class_names: Sequence[str], columns: int = 2) -> bytes:
    """The predictions drawn on their images (each scaled to :data:`SAMPLE_SIDE`), in a
    grid of ``columns``."""
    from PIL import Image

    from danlu.data.show import draw_detections
    from danlu.structures import Detections

    tiles = []
    for image, det in zip(images, detections, strict=True):
        h, w = image.shape[:2]
        scale = SAMPLE_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        # drawn at the size shown, so that lines and captions keep their size on any image
        resized = np.asarray(Image.fromarray(np.ascontiguousarray(image[..., :3])).resize(size))
        scaled = Detections(np.asarray(det.xyxy) * scale, det.labels, scores=det.scores,
                            polygons=None if det.polygons is None
                            else np.asarray(det.polygons) * scale)
        tiles.append(Image.fromarray(draw_detections(resized, scaled, class_names)))
    if not tiles:
        tiles = [Image.new("RGB", (SAMPLE_SIDE, SAMPLE_SIDE // 2), (40, 40, 40))]
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    gap = 4
    grid = Image.new("RGB", (cols * cell_w + (cols - 1) * gap, rows * cell_h + (rows - 1) * gap),
                     (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % cols) * (cell_w + gap), (i // cols) * (cell_h + gap)))
    buf = io.BytesIO()
    grid.save(buf, "PNG")
    return buf.getvalue()


__all__ = ["loss_curve_png", "samples_png", "SAMPLE_SIDE"]
