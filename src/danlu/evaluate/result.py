"""The result of :func:`danlu.evaluate`: one object for every protocol.

Example:
    >>> import numpy as np
    >>> r = EvalResult("voc12", ["cat"], metrics={"mAP": 0.5}, per_class={"cat": 0.5})
    >>> r.mAP, r.to_dict()["per_class"]
    (0.5, {'cat': 0.5})
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The 12 numbers of pycocotools' ``COCOeval.summarize``, in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl",
                   "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _plain(value: Any) -> Any:
    """A JSON-friendly copy: numpy to lists / floats, NaN to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return None if math.isnan(v) else v
    if isinstance(value, np.integer):
        return int(value)
    return value


@dataclass
class EvalResult:
    """Metrics of one evaluation.

    Args:
        protocol: ``"coco"``, ``"voc07"``, ``"voc12"``, ``"dota"`` or ``"dota-hbb"``.
        class_names: the classes, in label order.
        stats: COCO: the 12 numbers of pycocotools' summary, in its order (-1 where a number is
            undefined, as pycocotools writes it); VOC / DOTA: ``[mAP]``.
        metrics: the named numbers. COCO: ``AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100,
            ARs, ARm, ARl`` (the same values as ``stats``; with custom ``max_dets`` the names keep
            their positions: ``AR1`` is the recall at ``max_dets[0]``); VOC / DOTA: ``mAP``.
        per_class: AP of each class (COCO: AP@[.5:.95] over all areas at the largest
            ``max_dets``, as detectron2 reports it); NaN for a class without ground truth.
        num_gt: per class, the ground truth that counts (not crowd / ignored / difficult).
        curves: per class, ``(recall, precision)`` arrays for a PR plot. COCO: the 101 recall
            thresholds and the interpolated precision at IoU 0.5 (the first IoU threshold when
            0.5 is not one), NaN where undefined; VOC / DOTA: the raw curve, one point per
            counted detection in decreasing score order.
        precision: COCO only: pycocotools' ``eval["precision"]`` ``[T, R, K, A, M]`` (-1 where
            undefined).
        recall: COCO only: pycocotools' ``eval["recall"]`` ``[T, K, A, M]``.
        params: the options the evaluation ran with.

    Named numbers are attributes too: ``r.AP``, ``r.AP50``, ..., ``r.mAP`` (NaN when the
    protocol has no such number).
    """

    protocol: str
    class_names: list[str]
    stats: np.ndarray = field(default_factory=lambda: np.zeros(0))
    metrics: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, float] = field(default_factory=dict)
    num_gt: dict[str, int] = field(default_factory=dict)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    precision: np.ndarray | None = None
    recall: np.ndarray | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> float:
        # Only called when normal lookup fails: the named metrics.
        if name in COCO_STAT_NAMES or name == "mAP":
            metrics = self.__dict__.get("metrics", {})
            if name == "mAP" and "mAP" not in metrics:
                return float(metrics.get("AP", math.nan))
            return float(metrics.get(name, math.nan))
        raise AttributeError(f"EvalResult has no attribute {name!r}")

    @property
    def main_metric(self) -> tuple[str, float]:
        """The headline number: ``("AP", AP@[.5:.95])`` for COCO, ``("mAP", mAP)`` otherwise."""
        if self.protocol == "coco":
            return "AP", self.AP
        return "mAP", self.mAP

    def to_dict(self, *, curves: bool = False) -> dict[str, Any]:
        """A JSON-friendly dict: protocol, ``stats``, the named metrics beside it, per-class AP,
        ground-truth counts and params (NaN becomes None). ``curves=True`` adds the PR curves."""
        out: dict[str, Any] = {"protocol": self.protocol,
                               "stats": _plain(np.asarray(self.stats, float))}
        out.update(_plain(self.metrics))
        out["per_class"] = _plain(self.per_class)
        out["num_gt"] = _plain(self.num_gt)
        out["params"] = _plain(self.params)
        if curves:
            out["curves"] = {k: {"recall": _plain(r), "precision": _plain(p)}
                             for k, (r, p) in self.curves.items()}
        return out

    def _repr_html_(self) -> str:
        """The metrics as HTML, for a notebook: a line with the protocol and the headline number,
        then the tables of the HTML report (:func:`danlu.evaluate.page.metrics_table`: every
        named metric and per-class AP with ground-truth counts, four decimals, ``n/a`` where
        undefined) and the parameters (:func:`~danlu.evaluate.page.params_table`) folded away.

        Example:
            >>> r = EvalResult("voc12", ["cat"], metrics={"mAP": 0.5}, per_class={"cat": 0.5})
            >>> "<td>mAP</td><td>0.5000</td>" in r._repr_html_()
            True
        """
        import html

        from danlu.evaluate.page import metrics_table, number, params_table

        name, value = self.main_metric
        head = (f"<p><b>EvalResult</b> {html.escape(self.protocol)}: {name} {number(value)}, "
                f"{len(self.class_names)} classes</p>")
        params = (f"<details><summary>parameters</summary>{params_table(self.params)}</details>"
                  if self.params else "")
        return f"<div class='danlu-eval'>{head}{metrics_table(self)}{params}</div>"

    def __repr__(self) -> str:
        name, value = self.main_metric
        return (f"EvalResult(protocol={self.protocol!r}, {name}={value:.4f}, "
                f"classes={len(self.class_names)})")


__all__ = ["EvalResult", "COCO_STAT_NAMES"]
