"""Test-time augmentation: predict each image several ways and fuse the answers.

A pass is a horizontal flip or not, at an input size ``scale`` times the model's own. Every
pass's candidates are mapped back to the original image (un-flipped, un-scaled), suppressed on
their own by the Predictor's post-processing, and the passes are fused by weighted boxes fusion
(:func:`danlu.boxes.weighted_boxes_fusion`, IoU > 0.55, scores averaged over the passes, so a
box only one pass finds is down-weighted).

The default passes are the identity, the flip, and the scales 0.83 and 1.25 (sizes rounded
to a multiple of 32). Scales need a backend that can take another input size (a torch model:
:meth:`~danlu.infer.backend.TorchBackend.input_size`); others (exported, classical) get the
flip only.

Example:
    >>> TTAPass(flip=True, scale=1.0)
    TTAPass(flip=True, scale=1.0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from danlu.infer.postprocess import PostProcess
from danlu.models.transform import InputTransform
from danlu.structures import Detections

#: weighted boxes fusion's cluster threshold for the passes
FUSION_IOU = 0.55


@dataclass(frozen=True)
class TTAPass:
    """One way of looking at an image: mirrored left-right or not, at ``scale`` x the model's
    input size."""

    flip: bool = False
    scale: float = 1.0


DEFAULT_PASSES = (TTAPass(), TTAPass(flip=True), TTAPass(scale=0.83), TTAPass(scale=1.25))


def tta_passes(tta: bool | Sequence[TTAPass], backend: Any) -> tuple[TTAPass, ...]:
    """The passes ``tta`` asks for that ``backend`` can run (empty: no TTA)."""
    if tta is False or tta is None:
        return ()
    passes = DEFAULT_PASSES if tta is True else tuple(tta)
    if not hasattr(backend, "input_size") or backend.transform is None:
        passes = tuple(p for p in passes if p.scale == 1.0)
    return passes


def _size(base: int, scale: float) -> int:
    return max(32, int(round(base * scale / 32.0)) * 32)


def _unflip(det: Detections, width: int) -> Detections:
    if len(det):
        x1 = width - det.xyxy[:, 2]
        x2 = width - det.xyxy[:, 0]
        det.xyxy = np.stack([x1, det.xyxy[:, 1], x2, det.xyxy[:, 3]], axis=1).astype(np.float32)
    return det


def _pass_candidates(predictor: Any, arrays: list[np.ndarray], p: TTAPass,
                     score_threshold: float | None) -> list[Detections]:
    """One pass over ``arrays``: candidates in each original image's pixels."""
    views = [a[:, ::-1] if p.flip else a for a in arrays]
    backend = predictor.backend
    if backend.transform is None:
        dets = predictor.candidates([np.ascontiguousarray(v) for v in views], score_threshold)
    else:
        base = backend.transform
        transform = InputTransform(_size(base.size, p.scale), base.mode, base.pad_value)
        pairs = [transform.image(v) for v in views]
        sized = (backend.input_size(transform.size) if p.scale != 1.0
                 else contextlib.nullcontext())
        with sized:
            cands = predictor.candidates(torch.stack([t for t, _ in pairs]), score_threshold)
        dets = [transform.back(c, f, drop_outside=True)
                for c, (_, f) in zip(cands, pairs, strict=True)]
    return [_unflip(d, a.shape[1]) if p.flip else d for d, a in zip(dets, arrays, strict=True)]


def tta_candidates(predictor: Any, arrays: list[np.ndarray], score_threshold: float | None
                   ) -> list[list[Detections]]:
    """For each image of ``arrays``, one candidate set per pass of ``predictor.tta``, in the
    image's pixels."""
    per_pass = [_pass_candidates(predictor, arrays, p, score_threshold) for p in predictor.tta]
    return [list(image_passes) for image_passes in zip(*per_pass, strict=True)]


def fuse_passes(postprocess: PostProcess, passes: Sequence[Detections]) -> Detections:
    """Each pass through ``postprocess``, then the passes fused by WBF (at most
    ``postprocess.max_detections`` boxes, best first; one label per box again unless
    ``postprocess.multi_label``: passes may disagree on an object's class)."""
    finals = [postprocess(p) for p in passes]
    fuse = PostProcess("wbf", iou_threshold=FUSION_IOU,
                       max_detections=postprocess.max_detections,
                       multi_label=postprocess.multi_label)
    return fuse(finals)


__all__ = ["TTAPass", "DEFAULT_PASSES", "tta_passes", "tta_candidates", "fuse_passes"]
