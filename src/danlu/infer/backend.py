"""Backends: what gives the :class:`~danlu.infer.predictor.Predictor` its candidate boxes.

A backend is anything with this small surface (:class:`Backend`):

* ``class_names`` — the names its labels index;
* ``transform`` — the :class:`~danlu.models.transform.InputTransform` its images go through
  (the letterbox a trained model saw), or ``None`` for a backend that takes every image at its
  own size (the Haar cascades);
* ``default_iou`` / ``default_max_detections`` — its own suppression settings, the
  Predictor's defaults (None: 0.5 and 100);
* ``candidates(images, score_threshold)`` — the candidates before suppression, scoring at
  least ``score_threshold``: with a transform, ``images`` is a ``uint8 [B, 3, S, S]`` tensor
  and the boxes are in that square; without one, ``images`` is a list of ``HxWx3`` uint8
  arrays and the boxes are in each image's pixels.

:func:`open_backend` turns what a user names into a backend: a live ``nn.Module``, a danlu
checkpoint or run folder (:class:`TorchBackend`), an ``.onnx`` file or a TorchScript export
(:mod:`danlu.infer.exported`), or ``haar:NAME`` (:mod:`danlu.models.classical`).

Example:
    >>> import torch
    >>> from danlu.models import build_model
    >>> b = open_backend(build_model("fcos-tiny", num_classes=2, img_size=64), device="cpu",
    ...                  img_size=64, class_names=["a", "b"])
    >>> b.transform.size, b.class_names
    (64, ['a', 'b'])
    >>> type(b.candidates(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), 0.5)[0]).__name__
    'Detections'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from danlu.errors import ModelError
from danlu.models.candidates import candidates_mode, supports_candidates
from danlu.models.checkpoint import build_model_from_checkpoint, load_checkpoint
from danlu.models.device import resolve_device
from danlu.models.transform import InputTransform
from danlu.structures import Detections

#: an IoU threshold no pair of boxes exceeds: torchvision's suppression keeps every candidate
_NO_SUPPRESSION = 2.0
_NO_CAP = 1_000_000


@runtime_checkable
class Backend(Protocol):
    """What the Predictor needs of a model (see the module docstring)."""

    class_names: list[str]
    transform: InputTransform | None
    default_iou: float | None
    default_max_detections: int | None

    def candidates(self, images: Any, score_threshold: float) -> list[Detections]: ...


def score_threshold_holder(model: nn.Module) -> Any:
    """The module whose ``score_thresh``, ``nms_thresh`` and ``detections_per_img`` drive a
    torchvision detector's post-processing (the model itself, a danlu ``Detector``'s
    ``.model``, or Faster R-CNN's ``roi_heads``), or None."""
    for candidate in (model, getattr(model, "model", None)):
        if candidate is None:
            continue
        if isinstance(getattr(candidate, "score_thresh", None), (int, float)):
            return candidate
        heads = getattr(candidate, "roi_heads", None)
        if heads is not None and isinstance(getattr(heads, "score_thresh", None), (int, float)):
            return heads
    return None


def _inner_transform(model: nn.Module) -> Any:
    """torchvision's ``GeneralizedRCNNTransform`` inside ``model`` (or None)."""
    for candidate in (model, getattr(model, "model", None)):
        t = getattr(candidate, "transform", None)
        if t is not None and hasattr(t, "min_size") and hasattr(t, "max_size"):
            return t
    return None


class TorchBackend:
    """A torchvision-style detector (eval mode returns ``boxes/labels/scores`` dicts).

    Args:
        model: the module (a danlu ``Detector`` or a torchvision detector).
        transform: the input transform it was trained with.
        class_names: the names of its labels.
        device: where it runs.
        amp: float16 autocast on CUDA.
        config: the model config (a checkpoint's ``model_config``), for ``repr``.
    """

    def __init__(self, model: nn.Module, transform: InputTransform,
                 class_names: Sequence[str], device: torch.device, *, amp: bool = False,
                 config: dict[str, Any] | None = None) -> None:
        self.model = model.to(device)
        self.transform = transform
        self.class_names = list(class_names)
        self.device = device
        self.amp = bool(amp)
        self.config = dict(config or {})
        holder = score_threshold_holder(model)
        self.default_iou = getattr(holder, "nms_thresh", None)
        self.default_max_detections = getattr(holder, "detections_per_img", None)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device, *, amp: bool = False
                        ) -> TorchBackend:
        ckpt = load_checkpoint(path)
        return cls(build_model_from_checkpoint(ckpt), InputTransform.from_checkpoint(ckpt),
                   ckpt["class_names"], device, amp=amp, config=ckpt["model_config"])

    @property
    def name(self) -> str:
        return str(self.config.get("name", type(self.model).__name__))

    @contextlib.contextmanager
    def _candidate_mode(self, score_threshold: float) -> Iterator[None]:
        """Eval mode, the model's score threshold at most ours, and its own suppression and
        detection cap out of the way (candidates come out); restored afterwards. FCOS and
        RetinaNet hand over their decoded candidates directly
        (:mod:`danlu.models.candidates`); other detectors run their NMS at a threshold no
        pair of boxes exceeds."""
        was_training = self.model.training
        holder = score_threshold_holder(self.model)
        dense = holder is not None and supports_candidates(holder)
        names = ("score_thresh",) if dense else ("score_thresh", "nms_thresh",
                                                 "detections_per_img")
        old = {k: getattr(holder, k) for k in names if hasattr(holder, k)}
        self.model.eval()
        if holder is not None:
            holder.score_thresh = min(float(old["score_thresh"]), score_threshold)
            if "nms_thresh" in old:
                holder.nms_thresh = _NO_SUPPRESSION
            if "detections_per_img" in old:
                holder.detections_per_img = _NO_CAP
        try:
            with candidates_mode(holder) if dense else contextlib.nullcontext():
                yield
        finally:
            for k, v in old.items():
                setattr(holder, k, v)
            self.model.train(was_training)

    @contextlib.contextmanager
    def input_size(self, size: int) -> Iterator[None]:
        """Within the block the model takes ``size x size`` inputs (test-time scales): the
        resize inside torchvision's detector follows. Only the Predictor's transform decides
        what the model sees, so this changes nothing else."""
        inner = _inner_transform(self.model)
        if inner is None or size == self.transform.size:
            yield
            return
        old = (inner.min_size, inner.max_size)
        inner.min_size, inner.max_size = (int(size),), int(size)
        try:
            yield
        finally:
            inner.min_size, inner.max_size = old

    @torch.inference_mode()
    def candidates(self, images: torch.Tensor, score_threshold: float) -> list[Detections]:
        """``uint8 [B,3,S,S]`` transformed images -> candidates in the transformed frame."""
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        autocast = (torch.autocast("cuda", dtype=torch.float16)
                    if self.amp and self.device.type == "cuda" else contextlib.nullcontext())
        with self._candidate_mode(score_threshold), autocast:
            outputs = self.model(list(x))
        dets = []
        for out in outputs:
            loc = out.get("loc_scores")
            d = Detections(out["boxes"].float().cpu(), out["labels"].cpu(),
                           scores=out["scores"].float().cpu(),
                           extra=None if loc is None else {"loc_scores": loc.float().cpu()})
            dets.append(d.filter(min_score=score_threshold))
        return dets


def open_backend(model: Any, device: str | torch.device = "auto", *,
                 class_names: Sequence[str] | None = None, img_size: int | None = None,
                 resize: str = "letterbox", amp: bool = False, **options: Any) -> Any:
    """The backend for ``model``: a :class:`Backend` as is, an ``nn.Module`` (needs
    ``img_size``), ``haar:NAME`` (``options``: the cascade's settings), an ``.onnx`` /
    ``.torchscript`` export, or a danlu checkpoint / run folder."""
    if isinstance(model, nn.Module):
        if img_size is None:
            raise ModelError("Predictor(module) needs img_size (a checkpoint carries it)")
        return TorchBackend(model, InputTransform(int(img_size), resize),
                            class_names or [], resolve_device(device), amp=amp)
    if isinstance(model, Backend) and not isinstance(model, (str, Path)):
        return model
    if isinstance(model, str) and model.startswith("haar:"):
        from danlu.models.classical import HaarCascade

        return HaarCascade(model[len("haar:"):], **options)
    if options:
        raise ModelError(f"options {sorted(options)} apply to haar: models only")
    path = Path(model)
    from danlu.infer import exported  # the suffixes live with their reader

    if path.suffix.lower() in exported.ONNX_SUFFIXES + exported.TORCHSCRIPT_SUFFIXES:
        return exported.ExportedBackend(path, device=device)
    return TorchBackend.from_checkpoint(path, resolve_device(device), amp=amp)


def candidates_at_native_size(backend: Any, arrays: list[np.ndarray], score_threshold: float
                              ) -> list[Detections]:
    """Candidates of a transform-less backend, clipped to each image."""
    out = []
    for det, arr in zip(backend.candidates(arrays, score_threshold), arrays, strict=True):
        if len(det):
            h, w = arr.shape[:2]
            det.xyxy = np.clip(det.xyxy, 0, np.array([w, h, w, h], np.float32))
        out.append(det)
    return out


__all__ = ["Backend", "TorchBackend", "open_backend", "score_threshold_holder",
           "candidates_at_native_size"]
