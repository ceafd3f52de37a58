"""The Predictor: a trained detector as a function from images to :class:`Detections`.

``Predictor(path)`` needs nothing but a danlu checkpoint (``best.pt`` / ``last.pt`` or a run
folder): the checkpoint holds the model config, the class names and the input size. Images go
through the model's :class:`~danlu.models.transform.InputTransform` (the letterbox training
used) and detections come back in each original image's pixels.

The model gives candidates; danlu decides: the torchvision detector's own suppression is
switched off while predicting, and :class:`~danlu.infer.postprocess.PostProcess` (hard NMS by
default, with the model's own IoU threshold and detection cap, so the default output equals
torchvision's) chooses the final boxes with :mod:`danlu.boxes`.

Example:
    >>> from danlu import Predictor                                      # doctest: +SKIP
    >>> p = Predictor("runs/exp/best.pt", device="auto", nms="soft-gaussian")  # doctest: +SKIP
    >>> det = p.predict("image.jpg")          # Detections in the image's pixels  # doctest: +SKIP
    >>> [p.class_names[i] for i in det.labels], det.scores                # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from danlu.errors import DatasetError, ModelError
from danlu.infer.postprocess import PostProcess
from danlu.models.candidates import candidates_mode, supports_candidates
from danlu.models.checkpoint import build_model_from_checkpoint, load_checkpoint
from danlu.models.device import resolve_device
from danlu.models.transform import Frame, InputTransform
from danlu.structures import Dataset, Detections, Sample

ImageInput = str | Path | bytes | np.ndarray | torch.Tensor | Sample | Any


#: an IoU threshold no pair of boxes exceeds: torchvision's suppression keeps every candidate
_NO_SUPPRESSION = 2.0
_NO_CAP = 1_000_000


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


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Any supported image input -> ``HxWx3`` uint8 RGB array.

    Accepts a path, encoded bytes, an ``HxW(x3|4)`` uint8 array (float arrays in [0, 1] are
    scaled), a ``[3, H, W]`` tensor (uint8, or float in [0, 1]), a PIL image or a
    :class:`Sample`.
    """
    if isinstance(image, Sample):
        return image.load_image()
    if isinstance(image, (str, Path, bytes)):
        return Sample(image, 0, 0).load_image()
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    if hasattr(image, "convert") and hasattr(image, "size"):  # PIL image
        image = np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise DatasetError(f"cannot read an image from a {type(image).__name__}")
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise DatasetError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image[:, :, :3]


class Predictor:
    """Run a detector on images; boxes come back in each input image's pixels.

    Args:
        model: a checkpoint path (``.pt`` file or run folder), or a live ``nn.Module``
            (a torchvision-style detector: eval mode returns ``boxes/labels/scores`` dicts).
        device: ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda`` ...
        score_threshold: drop detections scoring below this.
        nms: the suppression (:data:`~danlu.infer.postprocess.METHODS`): ``hard`` (default,
            class-aware, torchvision's result), ``agnostic``, ``soft-linear``,
            ``soft-gaussian``, ``wbf``, ``nmm``, ``greedy-nmm``, ``iou-guided``, ``none``.
        iou: its IoU threshold (default: the model's own, 0.5 when it has none).
        max_detections: detections per image (default: the model's own cap, else 100).
        class_names / img_size / resize: needed only with a live module (a checkpoint has them).
        batch_size: images per forward pass.
        amp: float16 autocast on CUDA (off by default: boxes are decoded at full precision).
    """

    def __init__(self, model: str | Path | nn.Module, device: str | torch.device = "auto",
                 score_threshold: float = 0.05, *, nms: str = "hard", iou: float | None = None,
                 max_detections: int | None = None, class_names: Sequence[str] | None = None,
                 img_size: int | None = None, resize: str = "letterbox", batch_size: int = 8,
                 amp: bool = False) -> None:
        self.device = resolve_device(device)
        self.score_threshold = float(score_threshold)
        self.batch_size = int(batch_size)
        self.checkpoint_path: Path | None = None
        if isinstance(model, nn.Module):
            if img_size is None:
                raise ModelError("Predictor(module) needs img_size (a checkpoint carries it)")
            self.model = model
            self.class_names = list(class_names) if class_names is not None else []
            self.transform = InputTransform(int(img_size), resize)
            self.model_config: dict[str, Any] = {}
        else:
            ckpt = load_checkpoint(model)
            self.checkpoint_path = Path(model)
            self.model = build_model_from_checkpoint(ckpt)
            self.class_names = list(ckpt["class_names"])
            self.transform = InputTransform.from_checkpoint(ckpt)
            self.model_config = dict(ckpt["model_config"])
        self.model.to(self.device)
        self.amp = bool(amp)
        holder = score_threshold_holder(self.model)
        own_iou = getattr(holder, "nms_thresh", None)
        own_cap = getattr(holder, "detections_per_img", None)
        self.postprocess = PostProcess(
            nms, iou_threshold=float(iou if iou is not None else own_iou or 0.5),
            max_detections=int(max_detections if max_detections is not None
                               else own_cap or 100))

    @property
    def img_size(self) -> int:
        return self.transform.size

    @property
    def resize(self) -> str:
        return self.transform.mode

    # -- core ------------------------------------------------------------------------------------
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

    @torch.inference_mode()
    def candidates(self, images: torch.Tensor, score_threshold: float | None = None
                   ) -> list[Detections]:
        """``uint8 [B,3,S,S]`` already-transformed images -> the model's candidates (before
        suppression, scoring at least ``score_threshold``), in the transformed frame."""
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        autocast = (torch.autocast("cuda", dtype=torch.float16)
                    if self.amp and self.device.type == "cuda" else contextlib.nullcontext())
        with self._candidate_mode(thr), autocast:
            outputs = self.model(list(x))
        dets = []
        for out in outputs:
            loc = out.get("loc_scores")
            d = Detections(out["boxes"].float().cpu(), out["labels"].cpu(),
                           scores=out["scores"].float().cpu(),
                           extra=None if loc is None else {"loc_scores": loc.float().cpu()})
            dets.append(d.filter(min_score=thr))
        return dets

    def predict_tensor(self, images: torch.Tensor, score_threshold: float | None = None
                       ) -> list[Detections]:
        """``uint8 [B,3,S,S]`` already-transformed images -> final detections in the
        transformed frame (candidates through :attr:`postprocess`)."""
        return [self.postprocess(c) for c in self.candidates(images, score_threshold)]

    def _predict_arrays(self, arrays: Iterable[np.ndarray], score_threshold: float | None,
                        batch_size: int | None) -> Iterator[Detections]:
        bs = self.batch_size if batch_size is None else int(batch_size)
        chunk: list[tuple[torch.Tensor, Frame]] = []

        def flush() -> list[Detections]:
            dets = self.predict_tensor(torch.stack([c[0] for c in chunk]), score_threshold)
            out = [self.transform.back(d, frame)
                   for d, (_, frame) in zip(dets, chunk, strict=True)]
            chunk.clear()
            return out

        for arr in arrays:
            chunk.append(self.transform.image(arr))
            if len(chunk) >= bs:
                yield from flush()
        if chunk:
            yield from flush()

    # -- public -----------------------------------------------------------------------------------
    def predict(self, images: ImageInput | Sequence[ImageInput], *,
                score_threshold: float | None = None, batch_size: int | None = None
                ) -> Detections | list[Detections]:
        """Detect objects in one image (returns :class:`Detections`) or a list of images
        (returns a list). Boxes are in each original image's pixel coordinates."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        dets = list(self._predict_arrays((to_rgb_array(im) for im in items),
                                         score_threshold, batch_size))
        return dets[0] if single else dets

    def predict_dataset(self, ds: Dataset, *, score_threshold: float | None = None,
                        batch_size: int | None = None,
                        progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None
                        ) -> list[Detections]:
        """Detections for every sample of ``ds``, in order (for :func:`danlu.evaluate`)."""
        samples: Iterable[Sample] = ds.samples
        if progress is not None:
            samples = progress(samples)
        return list(self._predict_arrays((s.load_image() for s in samples),
                                         score_threshold, batch_size))

    def predictions_dataset(self, ds: Dataset, **kwargs: Any) -> Dataset:
        """``ds`` with each sample's detections replaced by predictions."""
        dets = self.predict_dataset(ds, **kwargs)
        samples = [Sample(s.image, s.width, s.height, d, id=s.id, meta=dict(s.meta))
                   for s, d in zip(ds.samples, dets, strict=True)]
        return Dataset(samples, ds.class_names, dict(ds.meta))

    def __repr__(self) -> str:
        name = self.model_config.get("name", type(self.model).__name__)
        return (f"Predictor({name!r}, classes={len(self.class_names)}, "
                f"img_size={self.img_size}, nms={self.postprocess.method!r}, "
                f"device={self.device})")


def predict_files(checkpoint: str | Path, paths: Sequence[str | Path], out: str | Path, *,
                  device: str = "auto", score_threshold: float = 0.25, batch_size: int = 8,
                  draw: bool = True,
                  progress: Callable[[Iterable[Any]], Iterable[Any]] | None = None,
                  **postprocess: Any) -> dict[str, Any]:
    """Predict image files with a checkpoint; write ``out/predictions.json`` (returned as a
    dict: ``class_names``, ``checkpoint``, ``images`` with ``path``, ``width``, ``height`` and
    ``detections`` in image pixels) and, with ``draw``, ``out/images/<stem>.png``.
    ``postprocess``: the :class:`Predictor` options ``nms``, ``iou``, ``max_detections``."""
    import orjson

    from danlu.data._atomic import write_bytes_atomic

    predictor = Predictor(checkpoint, device=device, score_threshold=score_threshold,
                          batch_size=batch_size, **postprocess)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    items: Iterable[Path] = progress(paths) if progress is not None else paths
    records: list[dict[str, Any]] = []
    used: set[str] = set()
    for path in items:
        image = to_rgb_array(path)
        det = predictor.predict(image)
        records.append({"path": str(path), "width": int(image.shape[1]),
                        "height": int(image.shape[0]), "detections": det.to_dict()})
        if draw:
            from PIL import Image

            from danlu.data.show import draw_detections

            stem = path.stem
            name, k = stem, 1
            while name in used:
                k += 1
                name = f"{stem}_{k}"
            used.add(name)
            (out / "images").mkdir(exist_ok=True)
            Image.fromarray(draw_detections(image, det, predictor.class_names)).save(
                out / "images" / f"{name}.png")
    doc = {"class_names": predictor.class_names, "checkpoint": str(checkpoint),
           "score_threshold": score_threshold, "nms": predictor.postprocess.method,
           "iou": predictor.postprocess.iou_threshold, "images": records}
    write_bytes_atomic(out / "predictions.json", orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return doc


__all__ = ["Predictor", "to_rgb_array", "predict_files", "score_threshold_holder"]
