"""``danlu predict`` as a library call: a Predictor over files, folders, globs and videos.

:func:`predict_sources` reads every input (:func:`danlu.infer.sources.expand_sources`),
predicts the images in batches, slices the ones larger than the model's input when asked
(:func:`danlu.infer.slicing.sliced_predict`, reading TIFF and PNG by window), and writes
``OUT/predictions.json`` (:func:`danlu.infer.outputs.write_outputs` adds other formats).

On an accelerator the next images are decoded in a background thread while the model works;
on the CPU they are decoded between batches (torch keeps every core busy already).

One bad file never stops a run: an unreadable, truncated or non-image file is recorded in
``failed`` with its reason (``strict=True`` raises at the first one instead), and the summary
counts it.

Example:
    >>> import numpy as np, tempfile, pathlib                              # doctest: +SKIP
    >>> p = Predictor("runs/exp/best.pt")                                  # doctest: +SKIP
    >>> doc = predict_sources(p, ["photos/"], "preds", slice_size="auto")  # doctest: +SKIP
    >>> doc["summary"]["images"], doc["summary"]["failed"]                 # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from danlu.errors import DatasetError
from danlu.infer.sources import expand_sources, is_video, video_frames
from danlu.structures import Detections


@dataclass
class PredictedImage:
    """One input's result: where it came from, its size, its detections (image pixels)."""

    path: Path
    width: int
    height: int
    detections: Detections
    frame: int | None = None
    sliced: bool = False
    geo: Any = None
    preview: np.ndarray | None = None  # the image (or, for a huge one, a shrunk copy) to draw
    preview_scale: float = 1.0

    def record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"path": str(self.path), "width": self.width,
                               "height": self.height, "detections": self.detections.to_dict()}
        if self.frame is not None:
            rec["frame"] = self.frame
        if self.sliced:
            rec["sliced"] = True
        return rec


@dataclass
class RunSummary:
    """Counts of one run."""

    images: int = 0
    detections: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "detections": self.detections,
                "failed": len(self.failed), "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images / self.seconds, 3)
                if self.seconds > 0 else 0.0}


def _decode(path: Path) -> tuple[np.ndarray | None, str | None]:
    from danlu.infer.images import try_read_image

    return try_read_image(path)


def _needs_slicing(path: Path, slice_size: int | str | None, model_size: int | None) -> bool:
    if slice_size is None:
        return False
    if slice_size != "auto":
        return True
    from danlu.data.imagesize import image_size

    try:
        w, h = image_size(path)
    except (DatasetError, OSError, ValueError):
        return False  # the plain path reports what is wrong with it
    return max(w, h) > 1.5 * (model_size or 1024)


def _prefetched(paths: list[Path], ahead: int, threads: int
                ) -> Iterator[tuple[Path, Future[Any]]]:
    """Each path with the future of its decoded image, ``ahead`` decodes in flight on a
    background thread (``threads`` 0: decoded when asked, in the calling thread)."""
    if threads <= 0:
        for p in paths:
            done: Future[Any] = Future()
            done.set_result(_decode(p))
            yield p, done
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="danlu-decode") as pool:
        pending: list[tuple[Path, Future[Any]]] = []
        for p in paths:
            pending.append((p, pool.submit(_decode, p)))
            if len(pending) > ahead:
                yield pending.pop(0)
        yield from pending


def predict_images(predictor: Any, sources: Sequence[str | Path], *,
                   slice_size: int | str | None = None, overlap: float = 0.2,
                   full_pass: bool = False, merge: Any = None, resolve_cuts: bool = True,
                   vid_stride: int = 1, recursive: bool = False, strict: bool = False,
                   keep_previews: bool = False, summary: RunSummary | None = None,
                   progress: Callable[[int], None] | None = None
                   ) -> Iterator[PredictedImage]:
    """Predict every input of ``sources``, in order, lazily (see the module docstring).

    ``slice_size``: None (never slice), a tile side, or ``"auto"`` (slice images larger than
    1.5x the model's input, tiles of the model's side). ``progress`` is called with the
    number of images (frames) just finished. Bad files land in ``summary.failed``.
    """
    from danlu.infer.slicing import reader_threads, sliced_predict

    readers = reader_threads(predictor)  # decoding beside the model only on an accelerator
    summary = summary if summary is not None else RunSummary()
    paths = expand_sources(sources, recursive=recursive)
    model_size = predictor.img_size
    plain: list[Path] = []

    def flush() -> Iterator[PredictedImage]:
        batch: list[tuple[Path, np.ndarray]] = []
        for path, fut in _prefetched(plain, 2 * predictor.batch_size, readers):
            image, error = fut.result()
            if image is None:
                _failed(summary, path, error or "unreadable", strict)
                if progress is not None:
                    progress(1)
                continue
            batch.append((path, image))
            if len(batch) >= predictor.batch_size:
                yield from _plain_batch(predictor, batch, keep_previews, progress)
                batch = []
        if batch:
            yield from _plain_batch(predictor, batch, keep_previews, progress)
        plain.clear()

    for path in paths:
        if is_video(path):
            yield from flush()
            yield from _video(predictor, path, vid_stride, keep_previews, summary, strict,
                              progress)
        elif _needs_slicing(path, slice_size, model_size):
            yield from flush()
            try:
                from danlu.infer.raster import open_raster

                with open_raster(path) as raster:
                    det = sliced_predict(predictor, raster, slice_size=slice_size or "auto",
                                         overlap=overlap, full_pass=full_pass, merge=merge,
                                         resolve_cuts=resolve_cuts)
                    preview, scale = _preview(raster) if keep_previews else (None, 1.0)
                    yield PredictedImage(path, raster.width, raster.height, det, sliced=True,
                                         geo=getattr(raster, "geo", None), preview=preview,
                                         preview_scale=scale)
            except DatasetError as e:
                _failed(summary, path, str(e), strict)
            if progress is not None:
                progress(1)
        else:
            plain.append(path)
    yield from flush()


def _failed(summary: RunSummary, path: Path, error: str, strict: bool) -> None:
    if strict:
        raise DatasetError(error if str(path) in error else f"{path}: {error}",
                           hint="without --strict, bad files are skipped and counted")
    summary.failed.append({"path": str(path), "error": error})


def _plain_batch(predictor: Any, batch: list[tuple[Path, np.ndarray]], keep_previews: bool,
                 progress: Callable[[int], None] | None) -> Iterator[PredictedImage]:
    dets = list(predictor.predict_arrays([im for _, im in batch]))
    for (path, image), det in zip(batch, dets, strict=True):
        yield PredictedImage(path, int(image.shape[1]), int(image.shape[0]), det,
                             preview=image if keep_previews else None)
    if progress is not None:
        progress(len(batch))


def _video(predictor: Any, path: Path, stride: int, keep_previews: bool,
           summary: RunSummary, strict: bool, progress: Callable[[int], None] | None
           ) -> Iterator[PredictedImage]:
    frames: list[tuple[int, np.ndarray]] = []

    def flush() -> Iterator[PredictedImage]:
        dets = list(predictor.predict_arrays([f for _, f in frames]))
        for (index, frame), det in zip(frames, dets, strict=True):
            yield PredictedImage(path, int(frame.shape[1]), int(frame.shape[0]), det,
                                 frame=index, preview=frame if keep_previews else None)
        if progress is not None:
            progress(len(frames))
        frames.clear()

    try:
        for index, frame in video_frames(path, stride):
            frames.append((index, frame))
            if len(frames) >= predictor.batch_size:
                yield from flush()
    except DatasetError as e:
        _failed(summary, path, str(e), strict)
    if frames:
        yield from flush()


def _preview(raster: Any, side: int = 2048) -> tuple[np.ndarray, float]:
    from danlu.infer.slicing import _overview

    return _overview(raster, side)


def next_predict_dir(root: str | Path = "runs/predict") -> Path:
    """A new, empty folder ``root/N`` for a run's predictions: ``N`` is one more than the
    largest number already there (1 for the first). The folder is created here with
    ``mkdir`` (which fails when it exists), so two runs started at once get two folders.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp()) / "predict"
        >>> [next_predict_dir(root).name for _ in range(3)]
        ['1', '2', '3']
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0) + 1
    while True:
        folder = root / str(n)
        try:
            folder.mkdir()
        except FileExistsError:  # another run took it first
            n += 1
            continue
        return folder


def predict_sources(predictor: Any, sources: Sequence[str | Path], out: str | Path, *,
                    formats: Sequence[str] = (), save_images: bool = True,
                    progress: Callable[[int], None] | None = None, **options: Any
                    ) -> dict[str, Any]:
    """Predict ``sources`` and write ``out/predictions.json`` (returned as a dict:
    ``class_names``, ``model``, ``images`` (``path``, ``width``, ``height``, ``detections``
    in image pixels; ``frame`` for video frames), ``failed`` and ``summary``), the extra
    ``formats`` (:data:`danlu.infer.outputs.FORMATS`), GeoJSON for georeferenced inputs, and
    with ``save_images`` the pictures with boxes drawn in ``out/images/``. ``options``: those
    of :func:`predict_images`."""
    from danlu.infer.outputs import write_outputs

    t0 = time.perf_counter()
    summary = RunSummary()
    results: list[PredictedImage] = []
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    drawer = _Drawer(out / "images", predictor.class_names) if save_images else None
    for item in predict_images(predictor, sources, summary=summary, progress=progress,
                               keep_previews=save_images, **options):
        if drawer is not None:
            drawer(item)
        item.preview = None  # drawn; a folder run holds detections only
        results.append(item)
    summary.images = len(results)
    summary.detections = sum(len(r.detections) for r in results)
    summary.seconds = time.perf_counter() - t0
    pp = predictor.postprocess
    doc = {"class_names": predictor.class_names, "model": str(predictor.checkpoint_path or
                                                               repr(predictor)),
           "score_threshold": predictor.score_threshold, "nms": pp.method,
           "iou": pp.iou_threshold, "multi_label": pp.multi_label,
           "images": [r.record() for r in results], "failed": summary.failed,
           "summary": summary.to_dict()}
    doc["checkpoint"] = doc["model"]  # the name older readers look for
    write_outputs(doc, results, predictor.class_names, out, formats)
    return doc


class _Drawer:
    """Writes ``<name>.png`` per result, named by :class:`~danlu.infer.outputs.ResultNames`."""

    def __init__(self, folder: Path, class_names: list[str]) -> None:
        from danlu.infer.outputs import ResultNames

        self.folder = folder
        self.class_names = class_names
        self.names = ResultNames()

    def __call__(self, item: PredictedImage) -> None:
        name = self.names(item)  # every result takes its name, drawn or not
        if item.preview is None:
            return
        from PIL import Image

        from danlu.data.show import draw_detections

        self.folder.mkdir(parents=True, exist_ok=True)
        det = item.detections
        if item.preview_scale != 1.0:
            det = det.scale(item.preview_scale, item.preview_scale)
        Image.fromarray(draw_detections(item.preview, det, self.class_names)).save(
            self.folder / f"{name}.png")


__all__ = ["predict_sources", "predict_images", "next_predict_dir", "PredictedImage",
           "RunSummary"]
