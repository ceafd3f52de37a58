"""The model side of the service: decoded uploads in, detections out.

:meth:`Engine.prepare` runs in the decode pool: it checks an upload (format and pixels from the
header, before any decoding), decodes it upright (:func:`danlu.infer.images.read_image`) and
letterboxes it into the model's square. :meth:`Engine.run_batch` runs on the batcher's model
thread: one model call for the whole batch, then each request's own post-processing.

A batch runs at the lowest score threshold among its requests; each request's candidates are
then cut at its own threshold before suppression, so its answer is what it would get alone.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from danlu.serve.config import ServeConfig
from danlu.serve.problems import RequestProblem, bad_option
from danlu.structures import Detections


@dataclass(frozen=True)
class DetectOptions:
    """One request's options (validated).

    Args:
        score_threshold: the lowest score returned.
        labels: keep only these class ids (None: all).
        max_detections: the most detections returned, best first (None: the model's cap).
        slice_size: predict tile by tile with tiles of this side (``"auto"``: see
            :func:`danlu.infer.slicing.auto_slice_size`); None: the whole image at once.
        overlap: the fraction of a tile shared with its neighbour when slicing.
    """

    score_threshold: float
    labels: frozenset[int] | None = None
    max_detections: int | None = None
    slice_size: int | str | None = None
    overlap: float = 0.2


@dataclass
class Prepared:
    """A decoded upload, ready for the model."""

    options: DetectOptions
    width: int
    height: int
    decode_s: float
    tensor: np.ndarray | None = None  # uint8 [S, S, 3] letterboxed, for a model with a transform
    frame: Any = None
    array: np.ndarray | None = None  # HxWx3 for transform-less models and sliced requests
    dispatched: bool = False  # set on the model thread when its batch starts


@dataclass
class Outcome:
    """One request's detections (in its image's pixels) and the model-side timings."""

    detections: Detections
    infer_s: float
    post_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def file_sha256(path: Path) -> str | None:
    """The SHA-256 of a file, or None when ``path`` is not a file (``haar:...``)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Engine:
    """A :class:`~danlu.infer.predictor.Predictor` split into the service's stages.

    Every torch call happens on one thread, :attr:`thread` (build with :meth:`open`): torch's
    CPU kernels keep one OpenMP team per calling thread, and two teams on the same cores
    measured 2-3x slower than one. The decode pool uses numpy and PIL only.

    Args:
        config: the service settings (the model, the device, the limits).
    """

    thread: ThreadPoolExecutor | None = None
    #: whether :meth:`prepare` is cheap enough to run on the event loop (here it decodes the
    #: image, so the routes send it to the decode pool)
    prepare_inline: bool = False

    @classmethod
    def open(cls, config: ServeConfig) -> Engine:
        """Build the engine on a new model thread of its own (kept as :attr:`thread`), at
        ``config.model_nice`` (its torch threads, created from it, inherit the value)."""
        thread = ThreadPoolExecutor(1, thread_name_prefix="danlu-model")
        try:
            thread.submit(_lower_priority, config.model_nice).result()
            engine = thread.submit(cls, config).result()
        except BaseException:
            thread.shutdown(wait=False)
            raise
        engine.thread = thread
        return engine

    def __init__(self, config: ServeConfig) -> None:
        from danlu.infer.predictor import Predictor

        self.config = config
        self.predictor = Predictor(config.model, config.device,
                                   score_threshold=config.score_threshold,
                                   batch_size=config.max_batch, **config.predictor_options)
        self.class_names = list(self.predictor.class_names)
        self._batched = self.predictor.transform is not None and not self.predictor.tta
        path = self.predictor.checkpoint_path
        self.checkpoint_sha256 = None if path is None else file_sha256(path)

    # -- description ------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(getattr(self.predictor.backend, "name", type(self.predictor.backend).__name__))

    def describe(self) -> dict[str, Any]:
        """The ``GET /v1/model`` document."""
        from danlu import __version__

        c = self.config
        backend = type(self.predictor.backend).__name__.removesuffix("Backend").lower()
        return {"name": self.name, "backend": backend or "custom",
                "class_names": self.class_names, "input_size": self.predictor.img_size,
                "resize": self.predictor.resize, "version": __version__,
                "checkpoint": str(c.model), "checkpoint_sha256": self.checkpoint_sha256,
                "device": str(self.predictor.device), "score_threshold": c.score_threshold,
                "max_batch": c.max_batch, "max_wait_ms": c.max_wait_ms,
                "max_upload_bytes": c.max_upload_bytes, "max_pixels": c.max_pixels,
                "formats": list(c.formats)}

    # -- options ---------------------------------------------------------------------------------
    def options(self, score_threshold: Any = None, classes: Any = None,
                max_detections: Any = None, slice_size: Any = None,
                overlap: Any = None) -> DetectOptions:
        """Raw query / form values -> :class:`DetectOptions`; 422 ``bad_option`` otherwise."""
        thr = _number(score_threshold, "score_threshold", float, self.config.score_threshold)
        if not 0.0 <= thr <= 1.0:
            raise bad_option(f"score_threshold must be in [0, 1], got {thr:g}")
        cap = _number(max_detections, "max_detections", int, None)
        if cap is not None and cap < 1:
            raise bad_option(f"max_detections must be at least 1, got {cap}")
        lap = _number(overlap, "overlap", float, 0.2)
        if not 0.0 <= lap < 0.95:
            raise bad_option(f"overlap must be in [0, 0.95), got {lap:g}")
        return DetectOptions(thr, self._labels(classes), cap, _slice(slice_size), lap)

    def _labels(self, classes: Any) -> frozenset[int] | None:
        if classes is None or str(classes).strip() == "":
            return None
        out = set()
        for part in str(classes).split(","):
            key = part.strip()
            if key in self.class_names:
                out.add(self.class_names.index(key))
            elif key.isdigit() and int(key) < len(self.class_names):
                out.add(int(key))
            else:
                raise bad_option(f"classes: unknown class {key!r}; the model's classes are "
                                 + ", ".join(self.class_names))
        return frozenset(out)

    # -- the decode pool -------------------------------------------------------------------------
    def prepare(self, data: bytes, options: DetectOptions) -> Prepared:
        """Check and decode one upload (in a pool thread); RequestProblem when it cannot be."""
        t0 = time.perf_counter()
        array = decode_upload(data, self.config)
        h, w = array.shape[:2]
        item = Prepared(options, w, h, 0.0)
        transform = self.predictor.transform
        if options.slice_size is not None or not self._batched:
            item.array = array
        else:
            item.tensor, item.frame = transform.array(array)  # HxWx3; torch on the model thread
        item.decode_s = time.perf_counter() - t0
        return item

    # -- the model thread ------------------------------------------------------------------------
    def run_batch(self, items: list[Prepared]) -> list[Outcome]:
        """One model call for ``items`` (all without ``slice_size``), then each one's
        post-processing."""
        for it in items:
            it.dispatched = True
        if not self._batched:
            return self._run_whole(items)
        import torch

        p = self.predictor
        low = min(it.options.score_threshold for it in items)
        t0 = time.perf_counter()
        batch = torch.from_numpy(np.stack([it.tensor for it in items]))
        cands = p.candidates(batch.permute(0, 3, 1, 2).contiguous(), low)
        infer_s = time.perf_counter() - t0
        out = []
        for it, cand in zip(items, cands, strict=True):
            t1 = time.perf_counter()
            det = p.finish(cand.filter(min_score=it.options.score_threshold))
            det = _select(p.transform.back(det, it.frame, drop_outside=True), it.options)
            out.append(Outcome(det, infer_s, time.perf_counter() - t1))
        return out

    def _run_whole(self, items: list[Prepared]) -> list[Outcome]:
        """Models without an input transform (classical, or test-time augmentation): the
        Predictor's own path, image by image within the batch."""
        low = min(it.options.score_threshold for it in items)
        t0 = time.perf_counter()
        dets = list(self.predictor.predict_arrays([it.array for it in items], low))
        took = (time.perf_counter() - t0) / max(1, len(items))
        return [Outcome(_select(d.filter(min_score=it.options.score_threshold), it.options), took,
                        0.0)
                for it, d in zip(items, dets, strict=True)]

    def run_sliced(self, item: Prepared) -> Outcome:
        """A big upload predicted tile by tile (on the model thread, between batches)."""
        from danlu.infer.slicing import SliceStats, sliced_predict

        stats = SliceStats()
        item.dispatched = True
        t0 = time.perf_counter()
        det = sliced_predict(self.predictor, item.array, slice_size=item.options.slice_size,
                             overlap=item.options.overlap,
                             score_threshold=item.options.score_threshold, workers=0,
                             stats=stats)
        took = time.perf_counter() - t0
        return Outcome(_select(det, item.options), took, 0.0, {"tiles": stats.tiles})

    def warm_decoders(self) -> None:
        """Decode a tiny JPEG and PNG (in a pool thread: PIL loads its plugins lazily)."""
        import io

        from PIL import Image

        opts = DetectOptions(self.config.score_threshold)
        for fmt in ("JPEG", "PNG"):
            if fmt in self.config.formats:
                buf = io.BytesIO()
                Image.new("RGB", (40, 30), (90, 120, 150)).save(buf, fmt)
                self.prepare(buf.getvalue(), opts)

    def warmup(self) -> None:
        """One batch of the full size and one suppression of overlapping boxes, so the first
        request does not pay for lazy setup (allocator, ONNX sessions, the numba kernels: a
        blank batch has no candidates to suppress, hence the made-up ones)."""
        boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
        labels = np.minimum([0, 0, 1], max(0, len(self.class_names) - 1))
        made_up = Detections(boxes, labels, scores=np.array([0.9, 0.8, 0.7], np.float32))
        from danlu.boxes.nms import SWEEP_CALLS

        for _ in range(SWEEP_CALLS + 1):  # past the numpy sweep: the kernel loads now
            self.predictor.finish(made_up)
        gray = np.full((32, 48, 3), 114, np.uint8)
        opts = DetectOptions(self.config.score_threshold)
        item = Prepared(opts, 48, 32, 0.0, array=gray)
        if self._batched:
            item.tensor, item.frame = self.predictor.transform.array(gray)
        self.run_batch([item] * self.config.max_batch)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux: per thread); quietly
    nothing where the OS does not allow it."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    import threading

    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError:
        pass


def decode_upload(data: bytes, config: ServeConfig) -> np.ndarray:
    """An upload's bytes -> ``HxWx3`` uint8 RGB, upright; RequestProblem (400 / 413 / 415)."""
    from danlu.errors import DatasetError
    from danlu.infer import images

    if not data:
        raise RequestProblem(400, "bad_image", "the upload is empty (0 bytes)", stage="decode")
    try:
        return images.read_image(data, max_pixels=config.max_pixels, formats=config.formats)
    except images.ImageTooLarge as e:
        raise RequestProblem(413, "too_large", e.message, stage="decode") from e
    except (images.NotAnImage, images.UnsupportedImageFormat) as e:
        text = e.message + (f" ({e.hint})" if e.hint else "")
        raise RequestProblem(415, "unsupported_format", text, stage="decode") from e
    except DatasetError as e:
        raise RequestProblem(400, "bad_image", e.message, stage="decode") from e
    except (OSError, ValueError, MemoryError) as e:  # a decoder's own failure
        raise RequestProblem(400, "bad_image", f"cannot decode the image ({e})",
                             stage="decode") from e


def _select(det: Detections, options: DetectOptions) -> Detections:
    """The request's class filter and cap (best first)."""
    if options.labels is not None:
        det = det.filter(labels=options.labels)
    if options.max_detections is not None and len(det) > options.max_detections:
        order = np.argsort(-det.scores, kind="stable")[: options.max_detections]
        det = det[np.sort(order)]
    return det


def _number(value: Any, name: str, kind: type, default: Any) -> Any:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise bad_option(f"{name} must be a number, got {value!r}") from None
    if isinstance(number, float) and not np.isfinite(number):
        raise bad_option(f"{name} must be finite, got {value!r}")
    return number


def _slice(value: Any) -> int | str | None:
    from danlu.errors import ConfigError
    from danlu.infer.slice_size import parse_slice_size  # torch-free: the web side uses it

    try:
        side = parse_slice_size(value, "slice")
    except ConfigError as e:
        raise bad_option(e.message) from None
    if isinstance(side, int) and side < 32:
        raise bad_option(f"slice must be at least 32 pixels, got {side}")
    return side


def detections_json(det: Detections, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """Detections -> the API's list of ``{box, label, class_name, score[, polygon]}``."""
    boxes = np.round(det.xyxy.astype(np.float64), 2).tolist()
    labels = det.labels.tolist()
    scores = ([None] * len(det) if det.scores is None
              else np.round(det.scores.astype(np.float64), 4).tolist())
    polys = (None if det.polygons is None
             else np.round(det.polygons.astype(np.float64), 2).tolist())
    out = []
    for i, (box, label, score) in enumerate(zip(boxes, labels, scores, strict=True)):
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        row = {"box": box, "label": label, "class_name": name, "score": score}
        if polys is not None:
            row["polygon"] = polys[i]
        out.append(row)
    return out


__all__ = ["Engine", "DetectOptions", "Prepared", "Outcome", "decode_upload",
           "detections_json", "file_sha256"]
