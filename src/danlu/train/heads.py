"""Training-only replacements of torchvision's detection heads: OHEM and soft sampling.

:func:`install_mining` swaps the class of a built detector's head for a subclass here, in place:
the parameters, their names and the state dict do not change, evaluation is torchvision's own
code, and a checkpoint loads into a plain :func:`danlu.models.build_model` model. The trainer
calls it for ``--ohem`` and ``--soft-sampling``.

* **Faster R-CNN** (:class:`MiningRoIHeads`): with OHEM, the RoI head takes *every* proposal of
  the RPN (plus the ground-truth boxes, as torchvision does) instead of a random 1:3 sample,
  computes each RoI's loss (cross-entropy + smooth-L1 box loss) without gradient, and
  back-propagates only the ``ohem_batch`` hardest per image after NMS over the RoIs ranked by loss
  (:func:`~danlu.train.sampling.ohem_select`). The loss of the selected RoIs is normalised as
  torchvision's (mean cross-entropy; box loss summed over positives, divided by the number of
  RoIs). The RPN is unchanged. With soft sampling, the cross-entropy of each background RoI is
  weighted by ``weight(max IoU with the labelled boxes)``; the normaliser stays the number of
  RoIs, so a weight of 1 gives torchvision's loss exactly.
* **RetinaNet** (:class:`MiningRetinaNetHead`): OHEM keeps, per image, the positive anchors and
  the ``neg_ratio`` times as many highest-loss negative anchors in the focal classification loss
  (normalised by the positives, as torchvision); soft sampling weights negative anchors by their
  anchor's IoU with the labelled boxes.
* **FCOS** (:class:`SoftFCOSHead`): soft sampling only. The overlap of a location is the fraction
  of its stride-sized cell covered by a labelled box (an IoU with a point is meaningless).
  OHEM does not apply: FCOS has no sampling step, and its focal loss already down-weights the
  easy negatives.
* SSD: neither (SSD already mines negatives 3:1).

Example:
    >>> import torch
    >>> from danlu.models import build_model
    >>> model = build_model("fasterrcnn-tiny", num_classes=2, img_size=64)
    >>> model = install_mining(model, ohem=True, ohem_batch=16)
    >>> type(model.model.roi_heads).__name__
    'MiningRoIHeads'
    >>> losses = model([torch.rand(3, 64, 64)],
    ...                [{"boxes": torch.tensor([[8., 8., 40., 40.]]), "labels": torch.tensor([1])}])
    >>> sorted(losses)
    ['loss_box_reg', 'loss_classifier', 'loss_objectness', 'loss_rpn_box_reg']
    >>> len(model.model.roi_heads.last_selection[0]) <= 16
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.ops import sigmoid_focal_loss

from danlu.errors import ConfigError
from danlu.targets import Target
from danlu.train.sampling import (
    WeightFn,
    background_weights,
    max_iou,
    ohem_select,
    parse_soft_sampling,
)

_BOX_BETA = 1.0 / 9  # torchvision's Fast R-CNN smooth-L1 beta


def roi_losses(class_logits: torch.Tensor, box_regression: torch.Tensor, labels: torch.Tensor,
               regression_targets: torch.Tensor, weights: torch.Tensor | None = None
               ) -> torch.Tensor:
    """``[N]`` loss of each RoI: (weighted) cross-entropy plus, for positives, the smooth-L1
    loss of the box of its class (summed over the 4 coordinates)."""
    ce = F.cross_entropy(class_logits, labels, reduction="none")
    if weights is not None:
        ce = ce * weights
    per = ce.clone()
    pos = torch.where(labels > 0)[0]
    if len(pos):
        reg = box_regression.reshape(len(labels), -1, 4)[pos, labels[pos]]
        box = F.smooth_l1_loss(reg, regression_targets[pos], beta=_BOX_BETA, reduction="none")
        per[pos] = per[pos] + box.sum(dim=1)
    return per


def roi_head_loss(class_logits: torch.Tensor, box_regression: torch.Tensor,
                  labels: torch.Tensor, regression_targets: torch.Tensor,
                  weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss_classifier, loss_box_reg)`` normalised as torchvision's ``fastrcnn_loss``
    (mean over the RoIs; box loss summed over positives / number of RoIs), with optional
    per-RoI weights on the cross-entropy."""
    n = max(len(labels), 1)
    ce = F.cross_entropy(class_logits, labels, reduction="none")
    cls = (ce * weights).sum() / n if weights is not None else ce.sum() / n
    pos = torch.where(labels > 0)[0]
    reg = box_regression.reshape(len(labels), -1, 4)[pos, labels[pos]]
    box = F.smooth_l1_loss(reg, regression_targets[pos], beta=_BOX_BETA, reduction="sum") / n
    return cls, box


class MiningRoIHeads(RoIHeads):
    """torchvision's ``RoIHeads`` with OHEM and/or soft sampling in training mode.

    Not built directly: :func:`install_mining` turns an existing ``RoIHeads`` into one and sets
    ``ohem_batch`` (None: torchvision's sampler), ``ohem_nms`` (IoU or None) and
    ``soft_weight`` (a weight function or None). After each training forward,
    ``last_selection`` holds, per image, the indices of the back-propagated RoIs among that
    image's candidate RoIs (``last_candidates``: the proposals plus the ground truth).
    """

    ohem_batch: int | None = None
    ohem_nms: float | None = 0.7
    soft_weight: WeightFn | None = None

    def forward(self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor],
                image_shapes: list[tuple[int, int]], targets: list[Target] | None = None
                ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if not self.training or (self.ohem_batch is None and self.soft_weight is None):
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets are needed in training mode")
        rois, labels, reg_targets, weights = self._training_rois(proposals, targets)
        if self.ohem_batch is None:  # soft sampling over torchvision's sample
            x = self.box_head(self.box_roi_pool(features, rois, image_shapes))
            logits, box_reg = self.box_predictor(x)
            cls, box = roi_head_loss(logits, box_reg, torch.cat(labels), torch.cat(reg_targets),
                                     None if weights is None else torch.cat(weights))
            return [], {"loss_classifier": cls, "loss_box_reg": box}
        pooled = self.box_roi_pool(features, rois, image_shapes)
        all_labels, all_targets = torch.cat(labels), torch.cat(reg_targets)
        all_weights = None if weights is None else torch.cat(weights)
        with torch.no_grad():
            logits, box_reg = self.box_predictor(self.box_head(pooled))
            per_roi = roi_losses(logits, box_reg, all_labels, all_targets, all_weights)
        chosen, offset, selection = [], 0, []
        for image_rois, image_losses in zip(rois, per_roi.split([len(r) for r in rois]),
                                            strict=True):
            keep = ohem_select(image_rois, image_losses, self.ohem_batch, self.ohem_nms)
            selection.append(keep)
            chosen.append(keep + offset)
            offset += len(image_rois)
        self.last_selection = selection
        self.last_candidates = [r.detach() for r in rois]
        idx = torch.cat(chosen)
        logits, box_reg = self.box_predictor(self.box_head(pooled[idx]))
        cls, box = roi_head_loss(logits, box_reg, all_labels[idx], all_targets[idx],
                                 None if all_weights is None else all_weights[idx])
        return [], {"loss_classifier": cls, "loss_box_reg": box}

    def _training_rois(self, proposals: list[torch.Tensor], targets: list[Target]
                       ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
                                  list[torch.Tensor] | None]:
        """Per image: the RoIs to score (all valid ones with OHEM, else torchvision's sample),
        their labels (0 = background), box regression targets and soft-sampling weights."""
        self.check_targets(targets)
        dtype = proposals[0].dtype
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        proposals = self.add_gt_proposals(proposals, gt_boxes)
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if self.ohem_batch is None:
            keep = self.subsample(labels)
        else:  # every RoI that is foreground or background (not ignored)
            keep = [torch.where(lab >= 0)[0] for lab in labels]
        rois, labs, matched_boxes, weights = [], [], [], []
        for i, k in enumerate(keep):
            rois.append(proposals[i][k])
            labs.append(labels[i][k])
            gt = gt_boxes[i] if gt_boxes[i].numel() else gt_boxes[i].new_zeros((1, 4))
            matched_boxes.append(gt[matched_idxs[i][k]])
            if self.soft_weight is not None:
                weights.append(background_weights(self.soft_weight, labs[-1] == 0, rois[-1],
                                                  gt_boxes[i]))
        reg_targets = list(self.box_coder.encode(matched_boxes, rois))
        return rois, labs, reg_targets, (weights if self.soft_weight is not None else None)


class MiningRetinaNetHead(RetinaNetHead):
    """torchvision's ``RetinaNetHead`` whose focal classification loss can mine hard negatives
    (``neg_ratio``: keep the positives and ``neg_ratio`` x as many highest-loss negatives per
    image; None: all) and weight negatives (``soft_weight``). Set by :func:`install_mining`."""

    neg_ratio: float | None = None
    soft_weight: WeightFn | None = None

    def compute_loss(self, targets: list[Target], head_outputs: dict[str, torch.Tensor],
                     anchors: list[torch.Tensor], matched_idxs: list[torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
        cls_head = self.classification_head
        losses = []
        for t, logits, anc, m in zip(targets, head_outputs["cls_logits"], anchors, matched_idxs,
                                     strict=True):
            fg = m >= 0
            num_fg = int(fg.sum())
            gt = torch.zeros_like(logits)
            gt[fg, t["labels"][m[fg]]] = 1.0
            per = sigmoid_focal_loss(logits, gt, reduction="none").sum(dim=1)
            valid = m != cls_head.BETWEEN_THRESHOLDS
            negative = m == -1  # torchvision Matcher.BELOW_LOW_THRESHOLD
            if self.soft_weight is not None:
                per = per * background_weights(self.soft_weight, negative, anc, t["boxes"])
            if self.neg_ratio is not None:
                k = math.ceil(self.neg_ratio * max(num_fg, 1))
                neg_idx = torch.where(negative)[0]
                hard = neg_idx[torch.topk(per.detach()[neg_idx], min(k, len(neg_idx))).indices]
                valid = fg.clone()
                valid[hard] = True
            losses.append(per[valid].sum() / max(1, num_fg))
        return {"classification": sum(losses) / len(targets),
                "bbox_regression": self.regression_head.compute_loss(targets, head_outputs,
                                                                     anchors, matched_idxs)}


class SoftFCOSHead(FCOSHead):
    """torchvision's ``FCOSHead`` with soft-sampling weights on background locations in the
    focal classification loss (``soft_weight``). Set by :func:`install_mining`."""

    soft_weight: WeightFn | None = None

    def compute_loss(self, targets: list[Target], head_outputs: dict[str, torch.Tensor],
                     anchors: list[torch.Tensor], matched_idxs: list[torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        if self.soft_weight is None:
            return losses
        cls_logits = head_outputs["cls_logits"]
        total, num_fg = cls_logits.new_zeros(()), 0
        for t, logits, anc, m in zip(targets, cls_logits, anchors, matched_idxs, strict=True):
            fg = m >= 0
            num_fg += int(fg.sum())
            gt = torch.zeros_like(logits)
            gt[fg, t["labels"][m[fg]]] = 1.0
            per = sigmoid_focal_loss(logits, gt, reduction="none").sum(dim=1)
            w = torch.ones_like(per)
            bg = ~fg
            if bool(bg.any()):
                w[bg] = self.soft_weight(cell_coverage(anc[bg], t["boxes"])).to(w.dtype)
            total = total + (per * w).sum()
        losses["classification"] = total / max(1, num_fg)
        return losses


def cell_coverage(cells: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``[N]`` largest fraction of each cell's area covered by one of ``gt`` (0 without gt)."""
    if gt.numel() == 0 or cells.numel() == 0:
        return cells.new_zeros(cells.shape[0])
    lt = torch.max(cells[:, None, :2], gt[None, :, :2].to(cells.dtype))
    rb = torch.min(cells[:, None, 2:], gt[None, :, 2:].to(cells.dtype))
    inter = (rb - lt).clamp(min=0).prod(dim=2)
    area = ((cells[:, 2] - cells[:, 0]) * (cells[:, 3] - cells[:, 1])).clamp(min=1e-9)
    return (inter / area[:, None]).max(dim=1).values


def install_mining(detector: nn.Module, *, ohem: bool = False, ohem_batch: int = 128,
                   ohem_nms: float | None = 0.7, neg_ratio: float = 3.0,
                   soft_sampling: str | float | WeightFn | None = None) -> nn.Module:
    """Turn on OHEM and/or soft sampling in a built detector's head, in place.

    Args:
        detector: a :class:`~danlu.models.builder.Detector` (or a bare torchvision FCOS,
            RetinaNet or Faster R-CNN with a ``config``-less call: pass ``detector.model``).
        ohem: hard example mining (Faster R-CNN RoI head, RetinaNet negatives).
        ohem_batch: RoIs back-propagated per image (Faster R-CNN).
        ohem_nms: NMS IoU over the loss-ranked RoIs (None: no NMS).
        neg_ratio: RetinaNet: negatives kept per positive.
        soft_sampling: a ``--soft-sampling`` string (see :mod:`danlu.train.sampling`) or a
            weight function of IoU; None: off.

    Returns:
        ``detector`` (same object). Raises :class:`~danlu.errors.ConfigError` for a family
        where the option does not apply.
    """
    weight = (parse_soft_sampling(soft_sampling)
              if isinstance(soft_sampling, (str, int, float)) else soft_sampling)
    tv = getattr(detector, "model", detector)
    name = getattr(detector, "config", {}).get("name", type(tv).__name__)
    roi_heads = getattr(tv, "roi_heads", None)
    head = getattr(tv, "head", None)
    if isinstance(roi_heads, RoIHeads):
        roi_heads.__class__ = MiningRoIHeads
        roi_heads.ohem_batch = int(ohem_batch) if ohem else None
        roi_heads.ohem_nms = ohem_nms
        roi_heads.soft_weight = weight
    elif isinstance(head, RetinaNetHead):
        head.__class__ = MiningRetinaNetHead
        head.neg_ratio = float(neg_ratio) if ohem else None
        head.soft_weight = weight
    elif isinstance(head, FCOSHead):
        if ohem:
            raise ConfigError(f"--ohem does not apply to {name}",
                              hint="FCOS has no sampling step and its focal loss already "
                              "down-weights easy negatives; use --soft-sampling, or a "
                              "fasterrcnn-*/retinanet-* model")
        head.__class__ = SoftFCOSHead
        head.soft_weight = weight
    else:
        raise ConfigError(f"--ohem/--soft-sampling are not available for {name}",
                          hint="available for fasterrcnn-*, retinanet-* and (soft sampling "
                          "only) fcos-* models")
    return detector


__all__ = ["install_mining", "MiningRoIHeads", "MiningRetinaNetHead", "SoftFCOSHead",
           "roi_losses", "roi_head_loss", "cell_coverage", "max_iou"]
