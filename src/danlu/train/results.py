"""``results.csv``, a run's one row per epoch: read, write, append and plot, in one place.

Columns: ``epoch``, the mean of each loss over the epoch, ``lr``, the validation numbers
(``AP50``, ``AP`` ...), ``epoch_time``, ``val_time`` and ``elapsed`` (seconds). Missing values
are empty cells; every write replaces the file atomically.

Example:
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "results.csv"
    >>> append_result(p, {"epoch": 1, "loss": 0.5, "AP": float("nan")})
    >>> append_result(p, {"epoch": 2, "loss": 0.25, "AP": 0.125})
    >>> [(r["epoch"], r["loss"], r["AP"]) for r in read_results(p)]
    [('1', '0.5', ''), ('2', '0.25', '0.125')]
    >>> keep_epochs(p, 1); len(read_results(p))
    1
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from danlu.train.report import pyplot, save_figure

#: validation columns (plotted as metrics, not losses): COCO's twelve numbers and VOC/DOTA's mAP
METRIC_COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs",
                  "ARm", "ARl", "mAP")


def split_columns(header: list[str]) -> tuple[list[str], list[str]]:
    """``(loss columns, validation-metric columns)`` of a ``results.csv`` header.

    Example:
        >>> split_columns(["epoch", "loss", "cls", "lr", "mAP", "epoch_time", "val_time"])
        (['loss', 'cls'], ['mAP'])
    """
    metrics = [k for k in header if k in METRIC_COLUMNS]
    losses = [k for k in header if k not in ("epoch", "lr", "epoch_time", "elapsed")
              and k not in METRIC_COLUMNS and not k.startswith("val")]
    return losses, metrics


def read_results(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``results.csv`` (empty when absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_results(path: str | Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Replace ``path`` with ``rows`` under the header ``fields`` (atomically)."""
    from danlu.data._atomic import atomic_open

    with atomic_open(Path(path), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)


def append_result(path: str | Path, row: dict[str, Any]) -> None:
    """Add one epoch's row; new columns are appended to the header."""
    rows = read_results(path)
    fields = list(rows[0].keys()) if rows else []
    fields += [k for k in row if k not in fields]
    write_results(path, [*rows, {k: _cell(v) for k, v in row.items()}], fields)


def keep_epochs(path: str | Path, last_epoch: int) -> None:
    """Drop the rows of epochs after ``last_epoch`` (what a resumed run had not finished)."""
    rows = read_results(path)
    kept = [r for r in rows if int(float(r["epoch"])) <= last_epoch]
    if len(kept) != len(rows):
        write_results(path, kept, list(rows[0].keys()) if rows else [])


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def plot_losses(results_csv: str | Path, out: str | Path) -> Path | None:
    """Training losses per epoch (left) and val AP50 / AP (right) from ``results.csv``."""
    rows = read_results(results_csv)
    if not rows:
        return None
    plt = pyplot()
    epochs = [float(r["epoch"]) for r in rows]

    def col(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]

    loss_names, metric_names = split_columns(list(rows[0]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k in loss_names:
        a.plot(epochs, col(k), marker="o", ms=3, label=k, lw=2 if k == "loss" else 1)
    a.set_xlabel("epoch")
    a.set_ylabel("training loss")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    for k in metric_names:
        b.plot(epochs, col(k), marker="o", ms=3, label=f"val {k}")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    save_figure(fig, Path(out))
    return Path(out)


__all__ = ["METRIC_COLUMNS", "read_results", "write_results", "append_result", "keep_epochs",
           "plot_losses", "split_columns"]
