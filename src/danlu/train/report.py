"""A run's pictures and its evaluation folder: per-class AP, ``eval/`` (PR curves and the HTML
report come from :mod:`danlu.evaluate.report`; loss curves from :mod:`danlu.train.results`).

Example:
    >>> from danlu.train.report import write_evaluation                   # doctest: +SKIP
    >>> write_evaluation("runs/exp/best.pt", val, "runs/exp/eval")        # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from danlu.structures import Dataset, Detections


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG atomically and close it."""
    from danlu.data._atomic import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)


def plot_per_class_ap(result: Any, out: str | Path) -> Path | None:
    """A bar per class: AP@[.5:.95] (COCO) or AP."""
    per_class = getattr(result, "per_class", None) or {}
    if not per_class:
        return None
    plt = pyplot()
    names = list(per_class)
    values = [0.0 if v is None or math.isnan(v) else float(v) for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.6))
    ax.bar(range(len(names)), values, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=45 if len(names) > 6 else 0, ha="right"
                  if len(names) > 6 else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP")
    ax.set_title("per-class AP")
    for i, v in enumerate(values):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", fontsize=8)
    save_figure(fig, Path(out))
    return Path(out)


def write_evaluation(checkpoint: str | Path, gt: Dataset, out_dir: str | Path, *,
                     device: Any = "auto", score_threshold: float = 0.05,
                     predictions: list[Detections] | None = None,
                     protocol: str = "coco") -> Any:
    """Load ``checkpoint`` as a user would (:class:`~danlu.infer.predictor.Predictor`), predict
    ``gt``'s images, evaluate (under ``protocol``, COCO by default) and write ``out_dir`` with
    :func:`danlu.evaluate.report.write_report` (``metrics.json``, ``pr_curves.png``,
    ``confusion_matrix.png``, ``gallery/``, ``report.html``) plus ``per_class_ap.png``.
    Returns the ``EvalResult``."""
    from danlu.evaluate.api import evaluate
    from danlu.evaluate.report import write_report

    out_dir = Path(out_dir)
    if predictions is None:  # torch only when there is something to predict
        from danlu.infer.predictor import Predictor

        # every class above the threshold, as training validation scores it
        predictor = Predictor(checkpoint, device=device, score_threshold=score_threshold,
                              multi_label=True)
        predictions = predictor.predict_dataset(gt)
    result = evaluate(gt, predictions, protocol=protocol)
    write_report(result, gt, predictions, out_dir)
    plot_per_class_ap(result, out_dir / "per_class_ap.png")
    return result


__all__ = ["pyplot", "save_figure", "plot_per_class_ap", "write_evaluation"]
