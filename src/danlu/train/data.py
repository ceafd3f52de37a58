"""Feeding a detector: decode + resize items, a seeded restorable batch order, collate.

* What training reads is a :class:`~danlu.structures.TrainingData` (a :class:`Dataset` or a
  :class:`~danlu.data.pack.PackedDataset`); images go through the model's
  :class:`~danlu.models.transform.InputTransform` (letterbox to ``img_size``), the same object
  the Predictor maps detections back with.
* :class:`DetectionDataset` is a ``torch.utils.data.Dataset``: item ``i`` is the resized uint8
  image and its :class:`~danlu.targets.Target` in the resized frame (boxes, labels, and the
  polygons and flags the data has), plus the :class:`~danlu.models.transform.Frame`.
* :class:`EpochBatchSampler` gives every epoch a permutation that depends only on
  ``(seed, epoch)``, and can start mid-epoch: resuming needs only the epoch and the batch index.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> img = np.zeros((50, 100, 3), np.uint8)
    >>> ds = Dataset([Sample(img, 100, 50, Detections([[10, 10, 50, 30]], [0]))], ["a"])
    >>> item = DetectionDataset(ds, img_size=64)[0]
    >>> tuple(item["image"].shape), [round(v, 3) for v in item["target"]["boxes"][0].tolist()]
    ((3, 64, 64), [6.4, 6.4, 32.0, 19.2])
    >>> s = EpochBatchSampler(10, batch_size=4, seed=0)
    >>> s.set_epoch(1, start_batch=1)
    >>> [len(b) for b in s]
    [4]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from danlu.errors import ConfigError, DatasetError
from danlu.models.transform import InputTransform
from danlu.structures import Dataset, Detections, TrainingData
from danlu.targets import Target, to_target

MIN_BOX_SIZE = 1.0  # pixels, in the resized frame; smaller boxes are dropped for training


def training_boxes(det: Detections) -> Detections:
    """The boxes to train on: those not flagged ``ignore`` or ``iscrowd``."""
    keep = ~(det.flag("ignore") | det.flag("iscrowd"))
    return det if keep.all() else det[keep]


def input_size_for(data: Any, *, multiple: int = 32, low: int = 128, high: int = 1024) -> int:
    """The input size that follows a training set: the median longer image side, rounded to
    the nearest multiple of ``multiple`` (the detectors' coarsest stride) and clamped to
    ``[low, high]`` (so that neither tiny thumbnails nor 10,000-pixel scenes, which want
    tiling, set it). A packed dataset answers its own stored size.

    Example:
        >>> from danlu.structures import Dataset, Sample
        >>> ds = Dataset([Sample(None, 500, 375), Sample(None, 640, 480),
        ...               Sample(None, 333, 500)], ["a"])
        >>> input_size_for(ds)
        512
    """
    packed = getattr(data, "img_size", None)
    if not isinstance(data, Dataset) and isinstance(packed, int):
        return packed
    sides = [max(data.item_size(i)) for i in range(len(data))]
    if not sides:
        raise ConfigError("img_size auto: the training data has no images")
    size = int(round(float(np.median(sides)) / multiple)) * multiple
    return int(min(max(size, low), high))


def _wh(det: Detections) -> np.ndarray:
    from danlu.boxes import box_convert

    return box_convert(np.asarray(det.xyxy, np.float64).reshape(-1, 4), "xyxy", "xywh")[:, 2:]


def training_box_sizes(data: TrainingData, img_size: int, resize: str = "letterbox"
                       ) -> np.ndarray:
    """Widths and heights ``[N, 2]`` (float64) of every training box (see
    :func:`training_boxes`) in the pixels the model sees after the resize to ``img_size``.

    Sizes and boxes come from the :class:`~danlu.structures.TrainingData` protocol
    (``item_size``, ``item_boxes``): no image is decoded.
    """
    transform = InputTransform(img_size, resize)
    parts: list[np.ndarray] = []
    for i in range(len(data)):
        w, h = data.item_size(i)
        frame = transform.frame(max(w, 1), max(h, 1))  # the scale training applies
        parts.append(_wh(training_boxes(data.item_boxes(i))) * frame.scale)
    return np.concatenate(parts) if parts else np.zeros((0, 2))


# -- datasets -----------------------------------------------------------------------------------
class DetectionDataset(torch.utils.data.Dataset):
    """Items ``{"image": uint8 [3,S,S], "target": Target, "index": int, "frame": Frame}`` with
    the target's boxes (and polygons) in the resized frame.

    Args:
        data: a :class:`~danlu.structures.TrainingData` (:class:`Dataset`, packed dataset).
        img_size: the square side ``S``.
        resize: ``letterbox`` or ``resize`` (stretch).
        train: drop ``ignore``/``iscrowd`` boxes and boxes under one pixel after resizing.
        cache: keep resized images in memory after their first decode (main process only).
        strict: an image that cannot be decoded raises; otherwise the next decodable item
            stands in for it (the batch keeps its size) and the item carries
            ``"skipped": [(index, reason)]`` for the trainer to warn about and count.
    """

    def __init__(self, data: TrainingData, img_size: int, resize: str = "letterbox", *,
                 train: bool = True, cache: bool = False, strict: bool = False) -> None:
        self.data = data
        self.transform = InputTransform(int(img_size), resize)
        self.train = train
        self.strict = strict
        self._cache: dict[int, tuple] | None = {} if cache else None

    @property
    def img_size(self) -> int:
        return self.transform.size

    def __len__(self) -> int:
        return len(self.data)

    def _load(self, index: int) -> tuple[int, np.ndarray, Detections, list]:
        """Item ``index``, or the next one that decodes (with what was skipped)."""
        skipped: list[tuple[int, str]] = []
        n = len(self.data)
        for k in range(n):
            i = (index + k) % n
            try:
                image, det = self.data.load_item(i)
                return i, image, det, skipped
            except (DatasetError, OSError, ValueError) as e:
                reason = (e.message if isinstance(e, DatasetError)
                          else f"{type(e).__name__}: {e}")
                if self.strict:
                    raise DatasetError(f"training image {i}: {reason}",
                                       hint="without --strict a broken image is skipped, "
                                       "with a warning naming it") from e
                skipped.append((i, reason))
        raise DatasetError(f"none of the {n} training images can be decoded",
                           hint=f"the first: {skipped[0][1] if skipped else '?'}")

    def __getitem__(self, index: int) -> dict[str, Any]:
        cached = self._cache.get(index) if self._cache is not None else None
        skipped: list = []
        if cached is None:
            index, image, det, skipped = self._load(index)
            tensor, frame = self.transform.image(image)
            if self._cache is not None:
                self._cache[index] = (tensor, frame, det)
        else:
            tensor, frame, det = cached
        if self.train:
            det = training_boxes(det)
        det = self.transform.boxes(det, frame)
        det.xyxy = np.clip(det.xyxy, 0, self.img_size)
        if self.train and len(det):
            wh = det.xyxy[:, 2:] - det.xyxy[:, :2]
            det = det[(wh >= MIN_BOX_SIZE).all(axis=1)]
        item = {"image": tensor, "target": to_target(det), "index": index, "frame": frame}
        if skipped:
            item["skipped"] = skipped
        return item


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images into ``uint8 [B,3,S,S]``; keep per-image targets (every key) as a list."""
    targets: list[Target] = [it["target"] for it in items]
    return {
        "images": torch.stack([it["image"] for it in items]),
        "targets": targets,
        "indices": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "frames": [it["frame"] for it in items],
        "skipped": [x for it in items for x in it.get("skipped", ())],
    }


# -- batch order ----------------------------------------------------------------------------------
class EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices; epoch ``e`` is a permutation that depends only on ``(seed, e)``.

    Args:
        num_items: dataset length.
        batch_size: indices per batch (per process under DDP).
        seed: the run's seed.
        shuffle: permute (else the natural order).
        drop_last: drop an incomplete last batch (default: when there is more than one batch).
        rank / world_size: this process's shard of every epoch's permutation (DDP).

    Call :meth:`set_epoch` before iterating; ``start_batch`` skips the batches a resumed run
    already trained on.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int = 0, *, shuffle: bool = True,
                 drop_last: bool | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.num_items = int(num_items)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = shuffle
        per_rank = -(-self.num_items // world_size)
        self.drop_last = per_rank > self.batch_size if drop_last is None else drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def order(self, epoch: int) -> np.ndarray:
        """This process's indices for ``epoch``, in order."""
        if self.shuffle:
            idx = np.random.default_rng([self.seed, epoch, 0xDA1]).permutation(self.num_items)
        else:
            idx = np.arange(self.num_items)
        if self.world_size > 1:  # pad by wrapping so every rank gets as many
            per_rank = -(-self.num_items // self.world_size)
            idx = np.resize(idx, per_rank * self.world_size)[self.rank::self.world_size]
        return idx

    def batches_per_epoch(self) -> int:
        n = len(self.order(0)) if self.world_size > 1 else self.num_items
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[int]]:
        idx = self.order(self.epoch)
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield idx[b * self.batch_size:(b + 1) * self.batch_size].tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state["start_batch"])


def make_loader(dataset: DetectionDataset, sampler: torch.utils.data.Sampler,
                workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` with ``sampler`` as its batch sampler."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=False,
    )


__all__ = ["DetectionDataset", "EpochBatchSampler", "collate", "make_loader", "training_boxes",
           "training_box_sizes", "input_size_for", "MIN_BOX_SIZE"]
