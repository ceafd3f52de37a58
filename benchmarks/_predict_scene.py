"""The model and the scenes of ``danlu bench predict`` (see benchmarks/predict.py).

* **The model**: ``fcos-tiny`` at 256 px, trained once and cached in
  ``~/.cache/danlu/bench-predict/<VERSION>/`` (``DANLU_BENCH_CACHE`` overrides the root), on two
  kinds of 256 x 256 ``shapes`` images: small objects as the big scene holds them (12-40 px
  canvases, 3-12 per image) and the demo's training split (16-80 px, 1-6 per image), so one
  model serves the sliced scene and the demo's test split. Validation: held-out images of both
  kinds. ``quick``: a one-epoch model on a few images (a smoke run; its boxes mean little).
* **The scene**: an ``N x N`` mosaic of ``B x B`` blocks, each block one
  :func:`~danlu.data.synth.synthesize_image` of the small-object distribution (its own
  background, 28-35 objects that never overlap), with the ground truth shifted into place.
  Full: 8,000 x 8,000, 64 blocks of 1,000, about 2,000 objects; ``quick``: 1,500 x 1,500,
  9 blocks of 500, about 70 objects. Built once and cached beside the model (``.npy``).
* **The huge TIFF** (:func:`write_huge_tiff`): a tiled (512), zlib-compressed RGB TIFF written
  tile by tile from a generator (crops of the scene), never held whole.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from danlu.structures import Dataset, Detections, Sample

#: bump when the training recipe or the scene changes: the cache is keyed by it
VERSION = "v2"
TILE = 256
SMALL = {"scale_range": (12, 40), "objects_per_image": (3, 12)}
CLASSES = ["circle", "square", "triangle", "star"]


def cache_dir(quick: bool = False) -> Path:
    root = Path(os.environ.get("DANLU_BENCH_CACHE")
                or Path.home() / ".cache" / "danlu" / "bench-predict")
    d = root / f"{VERSION}{'-quick' if quick else ''}"
    d.mkdir(parents=True, exist_ok=True)
    return d


# -- training data ---------------------------------------------------------------------------
def demo_splits(num_images: int = 1000) -> dict[str, Dataset]:
    """The demo's data: ``num_images`` shapes images at 256 px (seed 0, 16-80 px), split
    80/10/10 with the demo's seed (``danlu.demo.run_demo``)."""
    from danlu.data.split import split_dataset
    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=num_images, seed=0, image_size=(TILE, TILE),
                    scale_range=(16, 80), encode=False)
    return split_dataset(ds, (0.8, 0.1, 0.1), seed=0)


def small_tiles(num_images: int, seed: int) -> Dataset:
    """256 x 256 shapes images of small objects (the scene's distribution)."""
    from danlu.data.synth import synthesize

    return synthesize("shapes", num_images=num_images, seed=seed, image_size=(TILE, TILE),
                      encode=False, **SMALL)


def _concat(*parts: Dataset) -> Dataset:
    samples = [s for p in parts for s in p.samples]
    return Dataset(samples, list(parts[0].class_names))


def train_settings(quick: bool) -> dict:
    if quick:
        return {"small": 24, "demo": 8, "val_small": 8, "val_demo": 0, "epochs": 1,
                "time": None, "batch": 8}
    return {"small": 500, "demo": 400, "val_small": 60, "val_demo": 40, "epochs": 12,
            "time": None, "batch": 16}


def model_checkpoint(quick: bool = False, verbose: bool = True) -> Path:
    """The cached ``best.pt`` (trained here the first time)."""
    out = cache_dir(quick) / "model"
    best = out / "best.pt"
    if best.is_file():
        return best
    import torch

    from danlu.train.api import train

    s = train_settings(quick)
    demo = demo_splits(100 if quick else 1000)
    train_ds = _concat(small_tiles(s["small"], seed=11), demo["train"][: s["demo"]])
    val_parts = [small_tiles(s["val_small"], seed=12)]
    if s["val_demo"]:
        val_parts.append(demo["val"][: s["val_demo"]])
    val_ds = _concat(*val_parts)
    torch.set_num_threads(os.cpu_count() or 1)
    if verbose:
        print(f"bench predict: training fcos-tiny on {len(train_ds)} images "
              f"(cached in {out})", file=sys.stderr, flush=True)
    train(train_ds, model="fcos-tiny", epochs=s["epochs"], out=out, val=val_ds,
          time=s["time"], img_size=TILE, batch=s["batch"], lr=2e-3, seed=0, device="cpu",
          workers=0, augment="flips", exist_ok=True, plots=False, final_eval=False,
          progress=False, verbose=verbose)
    return best


# -- the scene -------------------------------------------------------------------------------
def scene_settings(quick: bool) -> dict:
    if quick:
        return {"side": 1500, "block": 500, "objects": (7, 9)}
    return {"side": 8000, "block": 1000, "objects": (28, 35)}


def build_scene(side: int, block: int, objects: tuple[int, int], seed: int = 101
                ) -> tuple[np.ndarray, Detections]:
    """A ``side x side`` mosaic of synthesized blocks and its ground truth (module doc)."""
    from danlu.data.synth import synthesize_image

    if side % block:
        raise ValueError("side must be a multiple of block")
    image = np.empty((side, side, 3), np.uint8)
    parts = []
    n = side // block
    for i in range(n * n):
        by, bx = divmod(i, n)
        img, det = synthesize_image("shapes", seed=seed, index=i, image_size=(block, block),
                                    objects_per_image=objects,
                                    scale_range=SMALL["scale_range"])
        image[by * block:(by + 1) * block, bx * block:(bx + 1) * block] = img
        parts.append(det.translate(float(bx * block), float(by * block)))
    return image, Detections.concat(parts)


def scene(quick: bool = False) -> tuple[np.ndarray, Detections]:
    """The cached scene ``(HxWx3 uint8, ground truth)``."""
    s = scene_settings(quick)
    d = cache_dir(quick)
    img_path, gt_path = d / "scene.npy", d / "scene_gt.npz"
    if img_path.is_file() and gt_path.is_file():
        g = np.load(gt_path)
        return np.load(img_path, mmap_mode=None), Detections(g["xyxy"], g["labels"])
    image, gt = build_scene(s["side"], s["block"], s["objects"])
    tmp = img_path.with_suffix(".tmp.npy")
    np.save(tmp, image)
    tmp.replace(img_path)
    np.savez(gt_path, xyxy=gt.xyxy, labels=gt.labels)
    return image, gt


# -- the huge TIFF ---------------------------------------------------------------------------
def write_huge_tiff(path: Path, side: int, source: np.ndarray, tile: int = 512) -> Path:
    """A ``side x side`` RGB TIFF, tiled ``tile``, zlib level 1, written tile by tile from a
    generator of crops of ``source`` (never held whole). Cached: an existing file of the
    right size is kept."""
    import tifffile

    if path.is_file():
        try:
            with tifffile.TiffFile(path) as tf:
                if tf.pages[0].shape[:2] == (side, side):
                    return path
        except Exception:  # noqa: BLE001 - a broken file: rewrite it
            pass
    sh, sw = source.shape[:2]
    n = -(-side // tile)

    def tiles():
        for ty in range(n):
            for tx in range(n):
                y = (ty * 3 * tile + tx * tile) % (sh - tile)
                x = (tx * tile + ty * 7 * tile) % (sw - tile)
                yield np.ascontiguousarray(source[y:y + tile, x:x + tile])

    tmp = path.with_suffix(".tmp.tif")
    tifffile.imwrite(tmp, tiles(), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="zlib", compressionargs={"level": 1})
    tmp.replace(path)
    return path


def ground_truth_dataset(gt: Detections, width: int, height: int) -> Dataset:
    return Dataset([Sample(None, width, height, gt, id=1)], list(CLASSES))


# -- our model as a SAHI model ---------------------------------------------------------------
_SAHI_CLASS = None


def sahi_model(predictor, confidence_threshold: float, native_batch: bool = True):
    """Our Predictor's model wrapped as a SAHI ``DetectionModel``: the same weights, the same
    letterbox (none at 256: a 256 tile goes in as is), the same per-tile post-processing
    (:meth:`Predictor.predict_tensor`) and score threshold.

    ``native_batch``: a batch of slices runs as one forward pass (``perform_batch_inference``
    overridden, as SAHI's Ultralytics and HuggingFace models do). Without it the model is
    what SAHI's own torchvision / mmdet / detectron2 wrappers are: only ``perform_inference``,
    so SAHI's default ``perform_batch_inference`` defers and runs the slices of a batch one by
    one (``batch_size=16`` still means one slice per forward pass)."""
    global _SAHI_CLASS
    if _SAHI_CLASS is None:
        _SAHI_CLASS = _define_sahi_class()
    return _SAHI_CLASS(predictor, confidence_threshold, native_batch)


def _define_sahi_class():
    import torch
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class DanluSahiModel(DetectionModel):
        def __init__(self, predictor, confidence_threshold: float,
                     native_batch: bool = True) -> None:
            self._predictor = predictor
            self._native_batch = bool(native_batch)
            names = predictor.class_names
            super().__init__(model=predictor, device="cpu",
                             confidence_threshold=confidence_threshold,
                             category_mapping={str(i): n for i, n in enumerate(names)},
                             load_at_init=True, image_size=predictor.img_size)

        def load_model(self) -> None:
            self.model = self._predictor

        def set_model(self, model, **kwargs) -> None:
            self.model = model

        def _run(self, images) -> list[Detections]:
            p = self._predictor
            pairs = [p.transform.image(np.ascontiguousarray(a)) for a in images]
            dets = p.predict_tensor(torch.stack([t for t, _ in pairs]),
                                    score_threshold=self.confidence_threshold)
            return [p.transform.back(d, frame, drop_outside=True)
                    for d, (_, frame) in zip(dets, pairs, strict=True)]

        def perform_inference(self, image: np.ndarray) -> None:
            self._original_predictions = self._run([image])

        def perform_batch_inference(self, images) -> None:
            if not self._native_batch:  # SAHI's default: deferred, one slice at a time
                super().perform_batch_inference(images)
                return
            self._batch_images = None  # native batching: no deferred per-image loop
            self._original_shapes = [im.shape for im in images]
            self._original_predictions = self._run(images)

        def _create_object_prediction_list_from_original_predictions(
                self, shift_amount_list=[[0, 0]], full_shape_list=None) -> None:  # noqa: B006
            if shift_amount_list is not None and len(shift_amount_list) and isinstance(
                    shift_amount_list[0], (int, float)):
                shift_amount_list = [shift_amount_list]
            if full_shape_list is not None and len(full_shape_list) and isinstance(
                    full_shape_list[0], (int, float)):
                full_shape_list = [full_shape_list]
            names = self.category_mapping
            per_image = []
            for i, det in enumerate(self._original_predictions):
                shift = shift_amount_list[i] if shift_amount_list else [0, 0]
                full = None if full_shape_list is None else full_shape_list[i]
                # thresholded already, as ours (score >= threshold)
                items = []
                for box, label, score in zip(det.xyxy.tolist(), det.labels.tolist(),
                                             det.scores.tolist(), strict=True):
                    items.append(ObjectPrediction(bbox=box, category_id=int(label),
                                                  category_name=names[str(label)],
                                                  shift_amount=shift, score=score,
                                                  full_shape=full))
                per_image.append(items)
            self._object_prediction_list_per_image = per_image

    return DanluSahiModel


def sahi_to_detections(object_predictions) -> Detections:
    """SAHI's ObjectPrediction list -> Detections (image pixels)."""
    if not object_predictions:
        return Detections.empty(with_scores=True)
    xyxy = np.array([o.bbox.to_xyxy() for o in object_predictions], np.float32)
    labels = np.array([o.category.id for o in object_predictions], np.int64)
    scores = np.array([o.score.value for o in object_predictions], np.float32)
    return Detections(xyxy, labels, scores=scores).sort_by_score()
