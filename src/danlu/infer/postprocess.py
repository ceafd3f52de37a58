"""Post-processing: from a detector's candidate boxes to the final detections, by danlu.boxes.

The Predictor asks the model for its candidates before suppression (score-thresholded,
top-k per level, decoded to pixels) and :class:`PostProcess` chooses what survives:

* ``hard`` — class-aware hard NMS (:func:`danlu.boxes.batched_nms`, ``IoU > iou`` suppresses);
  on the same candidates it keeps what torchvision's own post-processing keeps, in its order;
* ``agnostic`` — hard NMS over all classes (:func:`danlu.boxes.nms`);
  oriented boxes (``Detections.polygons``) go through :func:`danlu.boxes.polygon_nms` by both;
* ``soft-linear`` / ``soft-gaussian`` — class-aware Soft-NMS (:func:`danlu.boxes.soft_nms`;
  scores are the decayed ones, boxes whose decayed score is ``<= score_threshold`` go);
* ``wbf`` — weighted boxes fusion (:func:`danlu.boxes.weighted_boxes_fusion`) of the candidate
  lists of several passes (test-time augmentation, several models); with one pass it fuses
  overlapping candidates of one model;
* ``nmm`` / ``greedy-nmm`` — non-maximum merging (:func:`danlu.boxes.nmm`,
  :func:`danlu.boxes.greedy_nmm`, merged SAHI's way), matched by ``iou`` or ``ios``;
* ``iou-guided`` — :func:`danlu.boxes.iou_guided_nms`, for candidates that carry a
  localization score (``Detections.extra["loc_scores"]``);
* ``none`` — every candidate, best first.

At most ``max_detections`` survive, best first. Boxes are ``xyxy`` pixels; labels are kept.

**One label per box** (``multi_label=False``, what :class:`~danlu.infer.predictor.Predictor`
and ``danlu predict`` use by default): dense detectors (FCOS, RetinaNet) score every class at
every location, so one object often comes back as the same box under two or three classes
(the same anchor or point, IoU 1, or its neighbour, IoU > 0.9), and class-aware NMS keeps
them all. After the suppression, :func:`one_label_per_box` runs a class-agnostic hard NMS at
``IoU > ONE_LABEL_IOU`` (0.7): of boxes overlapping that much, whatever their classes, only the
best-scoring one stays. 0.7 is above every class-aware NMS threshold danlu's models use (0.5,
0.6), so after ``hard`` it removes only cross-class duplicates, and below the IoU of most
duplicates measured on trained models (fcos-tiny: 98 % above 0.9; retinanet-tiny: 85 % above
0.7; docs/predict.md), while two different objects of different classes overlapping that
much are rare. After Soft-NMS or a
merging method, same-class boxes that overlap that much go too (one box per place). ``none``
(no suppression at all) is left alone. ``multi_label=True`` (this class's default, and what
evaluation uses: COCO AP rewards a second-guess class at a lower score) keeps every class
above the score threshold. Oriented boxes use polygon IoU (:func:`danlu.boxes.polygon_nms`).

Example:
    >>> import numpy as np
    >>> from danlu.structures import Detections
    >>> cand = Detections([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], [0, 0, 0],
    ...                   scores=[0.9, 0.8, 0.7])
    >>> PostProcess("hard", iou_threshold=0.5)(cand).xyxy.tolist()  # the second box overlaps
    [[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from danlu.errors import ConfigError
from danlu.structures import Detections

METHODS = ("hard", "agnostic", "soft-linear", "soft-gaussian", "iou-guided", "wbf", "nmm",
           "greedy-nmm", "none")

#: boxes of different classes overlapping more than this are one object (one label per box)
ONE_LABEL_IOU = 0.7


def one_label_per_box(det: Detections, iou_threshold: float = ONE_LABEL_IOU) -> Detections:
    """``det`` with one label per box: class-agnostic hard NMS at ``IoU > iou_threshold``
    (:func:`danlu.boxes.nms`; :func:`danlu.boxes.polygon_nms` for oriented boxes), so of
    boxes that overlap that much only the best-scoring one stays, whatever its class.

    The survivors keep their order in ``det`` (a subset of it); unscored detections are
    returned as they are.

    Example:
        >>> same = Detections([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30]], [3, 0, 0],
        ...                   scores=[0.5, 0.36, 0.9])
        >>> one_label_per_box(same).labels.tolist()  # the star (3) beats the circle (0)
        [3, 0]
    """
    from danlu import boxes

    if det.scores is None or len(det) < 2:
        return det
    if det.polygons is not None:
        keep = boxes.polygon_nms(det.polygons, det.scores, iou_threshold)
    else:
        keep = boxes.nms(det.xyxy, det.scores, iou_threshold)
    if len(keep) == len(det):
        return det
    return det[np.sort(np.asarray(keep, np.int64))]


@dataclass(frozen=True)
class PostProcess:
    """Suppress or merge candidate detections (see the module docstring for the methods).

    Args:
        method: one of :data:`METHODS`.
        iou_threshold: the overlap above which boxes suppress (``>``) or merge (``>=`` for
            NMM, as its functions state).
        max_detections: keep at most this many, best first (0: no limit).
        score_threshold: drop results scoring below this (Soft-NMS: decayed scores).
        sigma: the gaussian Soft-NMS width.
        match: ``iou`` or ``ios`` (intersection over the smaller box), for the NMM methods.
        multi_label: True (default here): every class above the threshold, as the
            suppression leaves them; False: one label per box (:func:`one_label_per_box`,
            after the suppression and the score threshold, before the cap; not for ``none``).
    """

    method: str = "hard"
    iou_threshold: float = 0.5
    max_detections: int = 100
    score_threshold: float = 0.0
    sigma: float = 0.5
    match: str = "iou"
    multi_label: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown suppression {self.method!r}",
                              hint="one of " + ", ".join(METHODS))
        if self.match not in ("iou", "ios"):
            raise ConfigError(f"match must be iou or ios, got {self.match!r}")

    def __call__(self, candidates: Detections | Sequence[Detections]) -> Detections:
        """The final detections of one image from its candidates (one :class:`Detections`,
        or one per pass; passes are concatenated except by ``wbf``, which fuses them)."""
        passes = [candidates] if isinstance(candidates, Detections) else list(candidates)
        if not passes:
            return Detections.empty(with_scores=True)
        if self.method == "wbf":
            out = self._wbf(passes)
        else:
            out = self._suppress(Detections.concat(passes) if len(passes) > 1 else passes[0])
        if self.score_threshold > 0:
            out = out.filter(min_score=self.score_threshold)
        if not self.multi_label and self.method != "none":
            out = one_label_per_box(out)
        if self.max_detections and len(out) > self.max_detections:
            out = out[: self.max_detections]
        # what the candidates carried for the suppression (loc_scores) stays here
        return Detections(out.xyxy, out.labels, scores=out.scores, polygons=out.polygons,
                          flags=out.flags)

    def _suppress(self, det: Detections) -> Detections:
        from danlu import boxes

        if det.scores is None:
            raise ConfigError("post-processing needs scored candidates")
        if len(det) == 0:
            return det
        m, thr = self.method, self.iou_threshold
        if det.polygons is not None and m in ("hard", "agnostic"):  # oriented boxes
            labels = det.labels if m == "hard" else None
            return det[boxes.polygon_nms(det.polygons, det.scores, thr, labels=labels)]
        if m == "hard":
            return det[boxes.batched_nms(det.xyxy, det.scores, det.labels, thr)]
        if m == "agnostic":
            return det[boxes.nms(det.xyxy, det.scores, thr)]
        if m == "none":
            return det.sort_by_score()
        if m in ("soft-linear", "soft-gaussian"):
            keep, decayed = boxes.soft_nms(det.xyxy, det.scores, method=m[5:], sigma=self.sigma,
                                           iou_threshold=thr, labels=det.labels,
                                           score_threshold=self.score_threshold)
            return det[keep].with_scores(np.asarray(decayed, np.float32))
        if m == "iou-guided":
            loc = det.extra.get("loc_scores")
            if loc is None:
                raise ConfigError("iou-guided NMS needs a localization score per candidate",
                                  hint="this model gives none; use --nms hard or soft-*")
            keep, best = boxes.iou_guided_nms(det.xyxy, det.scores, loc, thr, labels=det.labels)
            return det[keep].with_scores(np.asarray(best, np.float32)).sort_by_score()
        return self._merge(det)

    def _merge(self, det: Detections) -> Detections:
        from danlu import boxes

        metric = self.match.upper()
        find = boxes.greedy_nmm if self.method == "greedy-nmm" else boxes.nmm
        clusters = find(det.xyxy, det.scores, det.labels, match_metric=metric,
                        match_threshold=self.iou_threshold)
        xyxy, scores, labels = boxes.merge_predictions(
            det.xyxy, det.scores, det.labels, clusters, match_metric=metric,
            match_threshold=self.iou_threshold)
        return Detections(np.asarray(xyxy, np.float32), labels,
                          scores=np.asarray(scores)).sort_by_score()

    def _wbf(self, passes: list[Detections]) -> Detections:
        from danlu.boxes import weighted_boxes_fusion

        if all(len(p) == 0 for p in passes):
            return Detections.empty(with_scores=True)
        xyxy, scores, labels = weighted_boxes_fusion(
            [p.xyxy for p in passes], [p.scores for p in passes], [p.labels for p in passes],
            iou_threshold=self.iou_threshold)
        return Detections(np.asarray(xyxy, np.float32), labels,
                          scores=np.asarray(scores, np.float32))


__all__ = ["PostProcess", "METHODS", "ONE_LABEL_IOU", "one_label_per_box"]
