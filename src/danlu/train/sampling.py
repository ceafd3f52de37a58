"""Which training samples count, and how much: hard-example selection and soft sampling.

* :func:`ohem_select` is the selection step of Online Hard Example Mining (Shrivastava et al.,
  CVPR 2016): rank RoIs by their loss, suppress near-duplicates with NMS (IoU 0.7 in the paper;
  optional), keep the top ``batch``.
* :func:`parse_soft_sampling` turns a ``--soft-sampling`` option into the weight function of
  Soft Sampling (Wu et al., BMVC 2019): with missing labels, a background sample far from every
  labelled box may be an unlabelled object, so its classification loss gets a smaller weight
  than a background sample next to a labelled box (a hard negative). The function maps the
  sample's largest IoU with the labelled boxes of its image to a weight; positives keep 1.

Option strings (``--soft-sampling``):

* ``"0.5"`` — a number ``a``: weight ``a`` for background that overlaps no labelled box
  (IoU 0), 1 for background that overlaps one;
* ``"0:0.25,0.3:0.6,0.5:1"`` — piecewise linear through ``iou:weight`` points (constant beyond
  the first and last point);
* ``"gompertz"`` or ``"gompertz:a,b,c"`` — ``a + (1 - a) * exp(-b * exp(-c * iou))``, a smooth
  rise from about ``a`` at IoU 0 to about 1 at IoU 0.5 (defaults ``a=0.25, b=8, c=12``), the
  shape of curve the paper uses; the defaults are ours.

Example:
    >>> import torch
    >>> w = parse_soft_sampling("0:0.25,0.5:1")
    >>> w(torch.tensor([0.0, 0.25, 0.9])).tolist()
    [0.25, 0.625, 1.0]
    >>> parse_soft_sampling("0.5")(torch.tensor([0.0, 0.1])).tolist()
    [0.5, 1.0]
    >>> boxes = torch.tensor([[0., 0, 10, 10], [0, 0, 10, 9], [20, 20, 30, 30]])
    >>> ohem_select(boxes, torch.tensor([3.0, 2.0, 1.0]), 2, nms_iou=0.7).tolist()
    [0, 2]
    >>> ohem_select(boxes, torch.tensor([3.0, 2.0, 1.0]), 2, nms_iou=None).tolist()
    [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from danlu.errors import ConfigError

WeightFn = Callable[[torch.Tensor], torch.Tensor]

GOMPERTZ_DEFAULT = (0.25, 8.0, 12.0)


def ohem_select(boxes: torch.Tensor, losses: torch.Tensor, batch: int,
                nms_iou: float | None = 0.7) -> torch.Tensor:
    """Indices of the hard examples to back-propagate, hardest first.

    Args:
        boxes: ``[N, 4]`` xyxy RoIs of one image.
        losses: ``[N]`` their losses (computed without gradient).
        batch: how many to keep (``B``; fewer when fewer survive).
        nms_iou: suppress an RoI whose IoU with a harder kept RoI is above this (the paper's
            0.7), so near-duplicates do not fill the batch; None ranks by loss alone (as
            mmdetection's OHEM sampler does).

    Returns:
        int64 ``[min(B, kept)]`` indices into the RoIs, by decreasing loss (ties: lower index
        first).
    """
    losses = losses.detach().float()
    if nms_iou is None:
        order = torch.sort(losses, descending=True, stable=True).indices
    else:
        from danlu.boxes.nms import nms

        order = nms(boxes.detach().float(), losses, float(nms_iou))
    return order[: int(batch)].to(torch.int64)


@dataclass(frozen=True)
class SoftWeight:
    """A weight function of IoU: piecewise-linear ``points`` or a Gompertz curve ``gompertz``.

    Call it on a tensor of IoUs in ``[0, 1]``; it returns weights of the same shape.
    """

    points: tuple[tuple[float, float], ...] = ()
    gompertz: tuple[float, float, float] | None = None
    step: float | None = None  # weight at IoU 0 (1 above)
    spec: str = ""

    def __call__(self, iou: torch.Tensor) -> torch.Tensor:
        iou = iou.float()
        if self.step is not None:
            return torch.where(iou > 0, torch.ones_like(iou), torch.full_like(iou, self.step))
        if self.gompertz is not None:
            a, b, c = self.gompertz
            return a + (1 - a) * torch.exp(-b * torch.exp(-c * iou))
        xs = torch.tensor([p[0] for p in self.points], dtype=iou.dtype, device=iou.device)
        ws = torch.tensor([p[1] for p in self.points], dtype=iou.dtype, device=iou.device)
        if len(self.points) == 1:
            return torch.full_like(iou, float(ws[0]))
        x = iou.clamp(float(xs[0]), float(xs[-1]))
        seg = (torch.searchsorted(xs, x.contiguous(), right=True) - 1).clamp(0, len(xs) - 2)
        x0, x1, w0, w1 = xs[seg], xs[seg + 1], ws[seg], ws[seg + 1]
        t = (x - x0) / (x1 - x0)
        return w0 + t * (w1 - w0)

    def is_identity(self) -> bool:
        """True when every IoU gets weight 1 (the loss is then unchanged)."""
        if self.step is not None:
            return self.step == 1.0
        if self.gompertz is not None:
            return self.gompertz[0] == 1.0
        return all(w == 1.0 for _, w in self.points)


def parse_soft_sampling(spec: str | float) -> SoftWeight:
    """Parse a ``--soft-sampling`` option (see the module docstring); raises
    :class:`~danlu.errors.ConfigError` on a malformed one."""
    text = str(spec).strip().lower()
    try:
        if text.startswith("gompertz"):
            params = text.partition(":")[2]
            a, b, c = (tuple(float(v) for v in params.split(",")) if params
                       else GOMPERTZ_DEFAULT)
            if not (0 <= a <= 1 and b > 0 and c > 0):
                raise ValueError("gompertz needs 0 <= a <= 1, b > 0, c > 0")
            return SoftWeight(gompertz=(a, b, c), spec=text)
        if ":" not in text:
            a = float(text)
            if not (0 <= a <= 1 and math.isfinite(a)):
                raise ValueError("the weight must be in [0, 1]")
            return SoftWeight(step=a, spec=text)
        points = []
        for part in text.split(","):
            x, _, w = part.partition(":")
            points.append((float(x), float(w)))
        points.sort()
        xs = [p[0] for p in points]
        if len(set(xs)) != len(xs) or not all(0 <= x <= 1 for x in xs):
            raise ValueError("IoU points must be distinct and in [0, 1]")
        if not all(0 <= w <= 1 for _, w in points):
            raise ValueError("weights must be in [0, 1]")
        return SoftWeight(points=tuple(points), spec=text)
    except ValueError as e:
        raise ConfigError(f"soft sampling {spec!r}: {e}",
                          hint='e.g. "0.5", "0:0.25,0.5:1" or "gompertz:0.25,8,12"') from None


def max_iou(boxes: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """``[N]`` largest IoU of each box with any of ``gt`` (0 when there is none)."""
    if gt.numel() == 0 or boxes.numel() == 0:
        return boxes.new_zeros(boxes.shape[0])
    from torchvision.ops import box_iou

    return box_iou(boxes.float(), gt.float()).max(dim=1).values


def background_weights(weight: WeightFn, is_background: torch.Tensor, boxes: torch.Tensor,
                       gt: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights: ``weight(max IoU with gt)`` for background, 1 otherwise."""
    w = torch.ones(is_background.shape, dtype=torch.float32, device=boxes.device)
    if bool(is_background.any()):
        w[is_background] = weight(max_iou(boxes[is_background], gt)).to(w.dtype)
    return w


__all__ = ["ohem_select", "SoftWeight", "parse_soft_sampling", "max_iou",
           "background_weights", "WeightFn", "GOMPERTZ_DEFAULT"]
