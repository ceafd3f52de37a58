"""The Predictor: a trained detector as a function from images to :class:`Detections`.

``Predictor(path)`` needs nothing but a danlu checkpoint (``best.pt`` / ``last.pt`` or a run
folder): the checkpoint holds the model config, the class names and the input size. Images go
through the model's :class:`~danlu.models.transform.InputTransform` (the letterbox training
used) and detections come back in each original image's pixels.

The model gives candidates; danlu decides: the torchvision detector's own suppression is
switched off while predicting, and :class:`~danlu.infer.postprocess.PostProcess` (hard NMS by
default, with the model's own IoU threshold and detection cap) chooses the final boxes with
:mod:`danlu.boxes`. By default a box gets one label: among boxes of different classes that
overlap above IoU 0.7 (dense detectors give the same box once per class), only the best
class stays (:func:`~danlu.infer.postprocess.one_label_per_box`). ``multi_label=True`` keeps
every class above the threshold: what evaluation uses (training validation, ``danlu eval
MODEL``), and then hard NMS returns exactly what torchvision's own post-processing returns.

Example:
    >>> from danlu import Predictor                                      # doctest: +SKIP
    >>> p = Predictor("runs/exp/best.pt", device="auto", nms="soft-gaussian")  # doctest: +SKIP
    >>> det = p.predict("image.jpg")          # Detections in the image's pixels  # doctest: +SKIP
    >>> [p.class_names[i] for i in det.labels], det.scores                # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from danlu.errors import ConfigError, DatasetError
from danlu.infer.backend import candidates_at_native_size, open_backend, score_threshold_holder
from danlu.infer.postprocess import PostProcess
from danlu.models.transform import InputTransform
from danlu.structures import Dataset, Detections, Sample

ImageInput = str | Path | bytes | np.ndarray | torch.Tensor | Sample | Any


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """Any supported image input -> ``HxWx3`` uint8 RGB array.

    Accepts a path, encoded bytes, an ``HxW(x3|4)`` uint8 array (float arrays in [0, 1] are
    scaled), a ``[3, H, W]`` tensor (uint8, or float in [0, 1]), a PIL image or a
    :class:`Sample`.
    """
    if isinstance(image, Sample):
        return image.load_image()
    if isinstance(image, (str, Path, bytes)):
        from danlu.infer.images import read_image

        return read_image(image)
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
        model: a checkpoint path (``.pt`` file or run folder), a live ``nn.Module`` (a
            torchvision-style detector: eval mode returns ``boxes/labels/scores`` dicts), an
            exported ``.onnx`` / ``.torchscript`` file, ``haar:NAME`` (an OpenCV cascade,
            :mod:`danlu.models.classical`), or any :class:`~danlu.infer.backend.Backend`.
        device: ``auto`` (cuda > mps > cpu), ``cpu``, ``cuda`` ...
        score_threshold: drop detections scoring below this.
        nms: the suppression (:data:`~danlu.infer.postprocess.METHODS`): ``hard`` (default,
            class-aware; with ``multi_label``, torchvision's result), ``agnostic``, ``soft-linear``,
            ``soft-gaussian``, ``wbf``, ``nmm``, ``greedy-nmm``, ``iou-guided``, ``none``.
        iou: its IoU threshold (default: the model's own, 0.5 when it has none).
        max_detections: detections per image (default: the model's own cap, else 100).
        match: ``iou`` or ``ios`` (intersection over the smaller box) for the NMM methods.
        multi_label: False (default): one label per box, the best class of boxes that
            overlap above IoU 0.7 (:mod:`danlu.infer.postprocess`), chosen before the
            per-class thresholds; True: every class above the threshold (for mAP; with
            ``nms="hard"`` the torchvision detector's own result).
        class_thresholds: a per-class score threshold (``{class name or label: score}``)
            over ``score_threshold``, for the classes it names.
        tta: test-time augmentation (:mod:`danlu.infer.tta`): ``True`` for the default
            passes (flip, two scales), merged by WBF.
        class_names: the class names; needed only with a live module (a checkpoint has them).
        img_size: the input side; needed only with a live module.
        resize: ``"letterbox"`` (keep the aspect ratio, pad) or ``"resize"`` (stretch); needed
            only with a live module.
        batch_size: images per forward pass.
        amp: float16 autocast on CUDA (off by default: boxes are decoded at full precision).
        backend_options: a ``haar:`` model's settings (``scale_factor``, ``min_neighbors``...).
    """

    def __init__(self, model: str | Path | nn.Module | Any, device: str | torch.device = "auto",
                 score_threshold: float = 0.05, *, nms: str = "hard", iou: float | None = None,
                 max_detections: int | None = None, match: str = "iou",
                 multi_label: bool = False, class_thresholds: dict[Any, float] | None = None,
                 tta: bool | Sequence[Any] = False, class_names: Sequence[str] | None = None,
                 img_size: int | None = None, resize: str = "letterbox", batch_size: int = 8,
                 amp: bool = False, **backend_options: Any) -> None:
        self.backend = open_backend(model, device, class_names=class_names, img_size=img_size,
                                    resize=resize, amp=amp, **backend_options)
        self.device = getattr(self.backend, "device", torch.device("cpu"))
        self.score_threshold = float(score_threshold)
        self.batch_size = int(batch_size)
        self.checkpoint_path = None if isinstance(model, nn.Module) else Path(str(model))
        own_iou = self.backend.default_iou
        own_cap = self.backend.default_max_detections
        self.postprocess = PostProcess(
            nms, iou_threshold=float(iou if iou is not None else own_iou or 0.5),
            max_detections=int(max_detections if max_detections is not None
                               else own_cap or 100), match=match,
            multi_label=bool(multi_label))
        self.class_floor = class_score_floor(class_thresholds or {}, self.class_names,
                                             self.score_threshold)
        from danlu.infer.tta import tta_passes

        self.tta = tta_passes(tta, self.backend)

    # -- what the backend is -----------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        return self.backend.class_names

    @property
    def transform(self) -> InputTransform | None:
        return self.backend.transform

    @property
    def model(self) -> nn.Module | None:
        """The torch module (None for exported and classical models)."""
        return getattr(self.backend, "model", None)

    @property
    def model_config(self) -> dict[str, Any]:
        return dict(getattr(self.backend, "config", {}))

    @property
    def img_size(self) -> int | None:
        return None if self.transform is None else self.transform.size

    @property
    def resize(self) -> str | None:
        return None if self.transform is None else self.transform.mode

    # -- core ------------------------------------------------------------------------------------
    def candidates(self, images: torch.Tensor | list[np.ndarray],
                   score_threshold: float | None = None) -> list[Detections]:
        """The backend's candidates (before suppression, scoring at least
        ``score_threshold``): for ``uint8 [B,3,S,S]`` transformed images, in the transformed
        frame; for a transform-less backend, a list of ``HxWx3`` arrays, in their pixels."""
        thr = self.score_threshold if score_threshold is None else float(score_threshold)
        if self.transform is None:
            return candidates_at_native_size(self.backend, list(images), thr)
        return self.backend.candidates(images, thr)

    def finish(self, candidates: Detections | Sequence[Detections]) -> Detections:
        """One image's candidates (or one list per pass) -> its final detections: the
        post-processing (with one label per box unless ``multi_label``), then the per-class
        thresholds."""
        return self.apply_class_thresholds(self.postprocess(candidates))

    def apply_class_thresholds(self, det: Detections) -> Detections:
        """``det`` without the detections under their class's threshold."""
        if self.class_floor is None or not len(det):
            return det
        labels = np.clip(det.labels, 0, len(self.class_floor) - 1)
        return det[det.scores >= self.class_floor[labels]]

    def predict_tensor(self, images: torch.Tensor, score_threshold: float | None = None
                       ) -> list[Detections]:
        """``uint8 [B,3,S,S]`` already-transformed images -> final detections in the
        transformed frame (candidates through :attr:`postprocess`)."""
        return [self.finish(c) for c in self.candidates(images, score_threshold)]

    def predict_arrays(self, arrays: Iterable[np.ndarray], score_threshold: float | None = None,
                       batch_size: int | None = None) -> Iterator[Detections]:
        """``HxWx3`` uint8 arrays -> their detections in their own pixels, lazily, in
        batches of ``batch_size``."""
        bs = self.batch_size if batch_size is None else int(batch_size)
        chunk: list[np.ndarray] = []
        for arr in arrays:
            chunk.append(arr)
            if len(chunk) >= bs:
                yield from self._predict_chunk(chunk, score_threshold)
                chunk = []
        if chunk:
            yield from self._predict_chunk(chunk, score_threshold)

    def _predict_chunk(self, arrays: list[np.ndarray], score_threshold: float | None
                       ) -> list[Detections]:
        if self.tta:
            from danlu.infer.tta import fuse_passes, tta_candidates

            return [self.apply_class_thresholds(fuse_passes(self.postprocess, passes))
                    for passes in tta_candidates(self, arrays, score_threshold)]
        if self.transform is None:
            return [self.finish(c) for c in self.candidates(arrays, score_threshold)]
        pairs = [self.transform.image(a) for a in arrays]
        cands = self.candidates(torch.stack([t for t, _ in pairs]), score_threshold)
        # suppressed in the model's square (as torchvision does), then mapped back
        return [self.transform.back(self.finish(c), frame, drop_outside=True)
                for c, (_, frame) in zip(cands, pairs, strict=True)]

    # -- public -----------------------------------------------------------------------------------
    def predict(self, images: ImageInput | Sequence[ImageInput], *,
                score_threshold: float | None = None, batch_size: int | None = None
                ) -> Detections | list[Detections]:
        """Detect objects in one image (returns :class:`Detections`) or a list of images
        (returns a list). Boxes are in each original image's pixel coordinates."""
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        dets = list(self.predict_arrays((to_rgb_array(im) for im in items),
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
        return list(self.predict_arrays((s.load_image() for s in samples),
                                        score_threshold, batch_size))

    def predictions_dataset(self, ds: Dataset, **kwargs: Any) -> Dataset:
        """``ds`` with each sample's detections replaced by predictions."""
        dets = self.predict_dataset(ds, **kwargs)
        samples = [Sample(s.image, s.width, s.height, d, id=s.id, meta=dict(s.meta))
                   for s, d in zip(ds.samples, dets, strict=True)]
        return Dataset(samples, ds.class_names, dict(ds.meta))

    def __repr__(self) -> str:
        name = getattr(self.backend, "name", type(self.backend).__name__)
        return (f"Predictor({name!r}, classes={len(self.class_names)}, "
                f"img_size={self.img_size}, nms={self.postprocess.method!r}, "
                f"multi_label={self.postprocess.multi_label}, device={self.device})")


def class_score_floor(thresholds: dict[Any, float], class_names: Sequence[str],
                      default: float) -> np.ndarray | None:
    """``{class name or label id: score}`` -> the minimum score of each label (``default``
    for the classes not named), or None when ``thresholds`` is empty."""
    if not thresholds:
        return None
    floor = np.full(max(len(class_names), 1), default, np.float32)
    index = {n: i for i, n in enumerate(class_names)}
    for key, value in thresholds.items():
        if isinstance(key, str) and key in index:
            i = index[key]
        elif isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
            i = int(key)
        else:
            raise ConfigError(f"per-class threshold for unknown class {key!r}",
                              hint="classes: " + ", ".join(class_names))
        if not 0 <= i < len(floor):
            raise ConfigError(f"per-class threshold for label {i}: the model has "
                              f"{len(class_names)} classes")
        floor[i] = float(value)
    return floor


__all__ = ["Predictor", "to_rgb_array", "score_threshold_holder",
           "class_score_floor"]
