"""Feeding a detector: decode + resize samples, a seeded restorable batch order, collate.

* :func:`resize_image` letterboxes (keeps the aspect ratio, pads right and bottom) or stretches
  (``resize``) an image to ``size x size``, as :mod:`danlu.data.pack` does; boxes scale by the
  returned factors, so mapping predictions back to the original image is a division
  (:func:`unscale_detections`).
* :class:`DetectionDataset` is a ``torch.utils.data.Dataset`` over a danlu
  :class:`~danlu.structures.Dataset` (or a packed cache): item ``i`` is the resized uint8 image,
  its boxes and labels in the resized frame, and the scale factors.
* :class:`EpochBatchSampler` gives every epoch a permutation that depends only on
  ``(seed, epoch)``, and can start mid-epoch: resuming needs only the epoch and the batch index.

Example:
    >>> import numpy as np
    >>> from danlu.structures import Dataset, Detections, Sample
    >>> img = np.zeros((50, 100, 3), np.uint8)
    >>> ds = Dataset([Sample(img, 100, 50, Detections([[10, 10, 50, 30]], [0]))], ["a"])
    >>> item = DetectionDataset(ds, img_size=64)[0]
    >>> tuple(item["image"].shape), [round(v, 3) for v in item["boxes"][0].tolist()]
    ((3, 64, 64), [6.4, 6.4, 32.0, 19.2])
    >>> s = EpochBatchSampler(10, batch_size=4, seed=0)
    >>> s.set_epoch(1, start_batch=1)
    >>> [len(b) for b in s]
    [4]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections

MIN_BOX_SIZE = 1.0  # pixels, in the resized frame; smaller boxes are dropped for training


# -- resizing -----------------------------------------------------------------------------------
def resize_image(image: np.ndarray, size: int, mode: str = "letterbox"
                 ) -> tuple[torch.Tensor, float, float]:
    """An ``HxWx3`` uint8 image -> ``(uint8 [3, size, size], sx, sy)``.

    Exactly what :mod:`danlu.data.pack` stores: ``letterbox`` keeps the aspect ratio (PIL
    bilinear) and pads the right/bottom with grey 114; ``resize`` stretches to ``size x size``.
    Box coordinates multiply by ``(sx, sy)``.
    """
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    h, w = image.shape[:2]
    if (w, h) == (size, size):
        out, sx, sy = image, 1.0, 1.0
    else:
        from danlu.data.pack import resize_image as pack_resize

        out, (sx, sy) = pack_resize(image, size, mode)
    out = np.ascontiguousarray(out)
    if not out.flags.writeable:  # e.g. PIL's buffer: torch wants memory it may write
        out = out.copy()
    return torch.from_numpy(out).permute(2, 0, 1).contiguous(), sx, sy


def unscale_detections(det: Detections, sx: float, sy: float, width: int | None = None,
                       height: int | None = None) -> Detections:
    """Map detections from the resized frame back to the original image (clipped to it)."""
    out = det.scale(1.0 / sx, 1.0 / sy)
    if width is not None and height is not None and len(out):
        out.xyxy = np.clip(out.xyxy, 0, np.array([width, height, width, height], np.float32))
    return out


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
    if isinstance(data, Dataset):
        sides = [max(s.width, s.height) for s in data.samples]
    else:
        source = as_source(data)
        sides = [max(source.load(i)[0].shape[:2]) for i in range(len(source))]
    if not sides:
        raise ConfigError("img_size auto: the training data has no images")
    size = int(round(float(np.median(sides)) / multiple)) * multiple
    return int(min(max(size, low), high))


def _wh(det: Detections) -> np.ndarray:
    from danlu.boxes import box_convert

    return box_convert(np.asarray(det.xyxy, np.float64).reshape(-1, 4), "xyxy", "xywh")[:, 2:]


def training_box_sizes(data: Any, img_size: int, resize: str = "letterbox") -> np.ndarray:
    """Widths and heights ``[N, 2]`` (float64) of every training box (see
    :func:`training_boxes`) in the pixels the model sees after the resize to ``img_size``.

    ``data`` is a :class:`Dataset` (sizes from each sample's ``width`` and ``height``) or a
    packed dataset with ``img_size`` (its boxes are in pack pixels, rescaled to ``img_size``).
    Without either (another :class:`ImageSource`) every image is read.
    """
    from danlu.data.pack import resized_shape

    parts: list[np.ndarray] = []
    if isinstance(data, Dataset):
        for sample in data.samples:
            w, h = max(sample.width, 1), max(sample.height, 1)
            nw, nh = resized_shape(w, h, img_size, resize)  # the scale training applies
            parts.append(_wh(training_boxes(sample.detections)) * (nw / w, nh / h))
    else:
        source = as_source(data)
        packed_size = getattr(data, "img_size", None)
        for i in range(len(source)):
            if packed_size is not None and hasattr(data, "detections"):
                det, k = data.detections(i), img_size / packed_size
            else:
                image, det = source.load(i)
                k = img_size / max(image.shape[:2])
            parts.append(_wh(training_boxes(det)) * k)
    return np.concatenate(parts) if parts else np.zeros((0, 2))


# -- datasets -----------------------------------------------------------------------------------
class ImageSource(Protocol):
    """What :class:`DetectionDataset` reads: any indexable collection of images with boxes."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, Detections]: ...


class _DatasetSource:
    """Decode samples of a danlu :class:`Dataset` on demand."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> tuple[np.ndarray, Detections]:
        sample = self.dataset.samples[index]
        return sample.load_image(), sample.detections


class _PackedSource:
    """Read a :class:`danlu.data.pack.PackedDataset` (memory-mapped, already resized): or any
    sequence whose items are ``(HxWx3 uint8 image, Detections)``."""

    def __init__(self, packed: Any) -> None:
        self.packed = packed

    def __len__(self) -> int:
        return len(self.packed)

    def load(self, index: int) -> tuple[np.ndarray, Detections]:
        image, det = self.packed[index]
        return np.asarray(image), det


def as_source(data: Any) -> ImageSource:
    """Wrap a :class:`Dataset`, a packed dataset or an :class:`ImageSource`."""
    if isinstance(data, Dataset):
        return _DatasetSource(data)
    if hasattr(data, "load") and hasattr(data, "__len__"):
        return data
    return _PackedSource(data)


class DetectionDataset(torch.utils.data.Dataset):
    """Items ``{"image": uint8 [3,S,S], "boxes": float32 [N,4], "labels": int64 [N],
    "index": int, "scale": (sx, sy), "orig_size": (h, w)}`` with boxes in the resized frame.

    Args:
        data: a :class:`Dataset`, a packed dataset, or an :class:`ImageSource`.
        img_size: the square side ``S``.
        resize: ``letterbox`` or ``resize`` (stretch).
        train: drop ``ignore``/``iscrowd`` boxes and boxes under one pixel after resizing.
        cache: keep resized images in memory after their first decode (main process only).
    """

    def __init__(self, data: Any, img_size: int, resize: str = "letterbox", *,
                 train: bool = True, cache: bool = False) -> None:
        self.source = as_source(data)
        self.img_size = int(img_size)
        self.resize = resize
        self.train = train
        self._cache: dict[int, tuple] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        cached = self._cache.get(index) if self._cache is not None else None
        if cached is None:
            image, det = self.source.load(index)
            h, w = image.shape[:2]
            tensor, sx, sy = resize_image(image, self.img_size, self.resize)
            if self._cache is not None:
                self._cache[index] = (tensor, sx, sy, h, w, det)
        else:
            tensor, sx, sy, h, w, det = cached
        if self.train:
            det = training_boxes(det)
        boxes = det.xyxy * np.array([sx, sy, sx, sy], np.float32)
        boxes = np.clip(boxes, 0, self.img_size)
        labels = det.labels
        if self.train and len(boxes):
            keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIZE) & \
                   ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIZE)
            boxes, labels = boxes[keep], labels[keep]
        return {"image": tensor, "boxes": torch.from_numpy(np.ascontiguousarray(boxes)),
                "labels": torch.from_numpy(np.ascontiguousarray(labels)), "index": index,
                "scale": (sx, sy), "orig_size": (h, w)}


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack images into ``uint8 [B,3,S,S]``; keep per-image targets as lists."""
    return {
        "images": torch.stack([it["image"] for it in items]),
        "targets": [{"boxes": it["boxes"], "labels": it["labels"]} for it in items],
        "indices": torch.tensor([it["index"] for it in items], dtype=torch.int64),
        "scales": [it["scale"] for it in items],
        "orig_sizes": [it["orig_size"] for it in items],
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


__all__ = ["DetectionDataset", "EpochBatchSampler", "collate", "make_loader", "resize_image",
           "unscale_detections", "training_boxes", "training_box_sizes", "input_size_for",
           "ImageSource",
           "as_source"]
