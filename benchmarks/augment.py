"""Augmentation throughput: flip + affine + colour jitter with boxes, 256 px images.

Ours (:class:`danlu.augment.DetectionAugment`, batched on the training device, here the CPU) at
batch 16 and 64 against albumentations (one image at a time, numpy uint8 HWC, as a data loader
worker runs it), torchvision.transforms.v2 (one image at a time, uint8 tensors with
``tv_tensors.BoundingBoxes``) and Kornia's ``AugmentationSequential`` (batch 16, float).
Times are seconds per 256 images. Ours takes the same uint8 images (a ``[B, 3, H, W]`` tensor)
and includes the conversion to float.

Every contender runs on one thread (``torch.set_num_threads(1)``, ``cv2.setNumThreads(1)``), so
the table compares per-core throughput: on a shared 2-core machine, intra-op threads made every
torch contender slower, and a data-loader worker runs on one thread anyway.

The outputs differ by randomness, so ``agree`` is a sanity check: every output box lies inside
the image with its label, and the fraction of boxes kept is within 0.1 of the peer's (Kornia
keeps every box; its boxes are clipped and counted when both sides are >= 2 px).

Run: ``danlu bench augment`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks._common import Row, measure

TITLE = "augment"

SIZE = 256
BOXES_PER_IMAGE = 4
# the same pipeline for everyone
HFLIP, DEGREES, SCALE, TRANSLATE = 0.5, 10.0, (0.8, 1.2), 0.1
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0.2, 0.2, 0.2, 0.02
MIN_VISIBILITY = 0.25


def make_data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` images ``[n, H, W, 3]`` uint8, boxes ``[n, K, 4]`` xyxy float32, labels ``[n, K]``."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    wh = rng.uniform(20, 120, (n, BOXES_PER_IMAGE, 2))
    xy = rng.uniform(0, 1, (n, BOXES_PER_IMAGE, 2)) * (SIZE - wh)
    boxes = np.concatenate([xy, xy + wh], axis=-1).astype(np.float32)
    labels = rng.integers(0, 5, (n, BOXES_PER_IMAGE))
    return images, boxes, labels


def _valid(boxes: np.ndarray, labels: np.ndarray) -> bool:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return (len(boxes) == len(labels) and bool((boxes >= -1e-3).all())
            and bool((boxes[:, [0, 2]] <= SIZE + 1e-3).all())
            and bool((boxes[:, [1, 3]] <= SIZE + 1e-3).all())
            and bool((boxes[:, 2:] > boxes[:, :2]).all()))


# -- ours ------------------------------------------------------------------------------------
def _ours(images: np.ndarray, boxes: np.ndarray, labels: np.ndarray, batch: int):
    from danlu.augment import DetectionAugment

    aug = DetectionAugment(hflip=HFLIP, degrees=DEGREES, scale=SCALE, translate=TRANSLATE,
                           brightness=BRIGHTNESS, contrast=CONTRAST, saturation=SATURATION,
                           hue=HUE, min_visibility=MIN_VISIBILITY)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # uint8 [N, 3, H, W]
    tb, tl = torch.from_numpy(boxes), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(0)
    out: list = []

    def run() -> None:
        out.clear()
        for i in range(0, len(x), batch):
            targets = [{"boxes": tb[j], "labels": tl[j]} for j in range(i, min(i + batch, len(x)))]
            out.append(aug(x[i:i + batch], targets, generator=gen))  # uint8 in, float out

    def check() -> tuple[bool, float]:
        ok, kept = True, 0
        for imgs, targets in out:
            ok &= tuple(imgs.shape[1:]) == (3, SIZE, SIZE)
            for t in targets:
                ok &= _valid(t["boxes"].numpy(), t["labels"].numpy())
                kept += len(t["boxes"])
        return ok, kept / boxes[..., 0].size

    return run, check


# -- peers -----------------------------------------------------------------------------------
def _albumentations(images: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
    import albumentations as A

    tf = A.Compose(
        [A.HorizontalFlip(p=HFLIP),
         A.Affine(scale=SCALE, translate_percent=(-TRANSLATE, TRANSLATE),
                  rotate=(-DEGREES, DEGREES), p=1.0),
         A.ColorJitter(brightness=BRIGHTNESS, contrast=CONTRAST, saturation=SATURATION,
                       hue=HUE, p=1.0)],
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"],
                                 min_visibility=MIN_VISIBILITY),
        seed=0,
    )
    out: list = []

    def run() -> None:
        out.clear()
        for img, b, lab in zip(images, boxes, labels, strict=True):
            out.append(tf(image=img, bboxes=b, labels=lab))

    def check() -> tuple[bool, float]:
        ok, kept = True, 0
        for r in out:
            ok &= r["image"].shape == (SIZE, SIZE, 3)
            ok &= _valid(np.asarray(r["bboxes"]), np.asarray(r["labels"]))
            kept += len(r["bboxes"])
        return ok, kept / boxes[..., 0].size

    return run, check


def _torchvision(images: np.ndarray, boxes: np.ndarray, labels: np.ndarray):
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    tf = v2.Compose([
        v2.RandomHorizontalFlip(p=HFLIP),
        v2.RandomAffine(degrees=DEGREES, translate=(TRANSLATE, TRANSLATE), scale=SCALE),
        v2.ColorJitter(brightness=BRIGHTNESS, contrast=CONTRAST, saturation=SATURATION,
                       hue=HUE),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2.0),
    ])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    samples = [(tv_tensors.Image(x[i]),
                {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes[i]), format="XYXY",
                                                   canvas_size=(SIZE, SIZE)),
                 "labels": torch.from_numpy(labels[i])}) for i in range(len(x))]
    out: list = []

    def run() -> None:
        torch.manual_seed(0)
        out.clear()
        for img, target in samples:
            out.append(tf(img, target))

    def check() -> tuple[bool, float]:
        ok, kept = True, 0
        for img, t in out:
            ok &= tuple(img.shape) == (3, SIZE, SIZE)
            ok &= _valid(t["boxes"].numpy(), t["labels"].numpy())
            kept += len(t["boxes"])
        return ok, kept / boxes[..., 0].size

    return run, check


def _kornia(images: np.ndarray, boxes: np.ndarray, labels: np.ndarray, batch: int):
    import kornia.augmentation as K

    seq = K.AugmentationSequential(
        K.RandomHorizontalFlip(p=HFLIP),
        K.RandomAffine(degrees=DEGREES, translate=(TRANSLATE, TRANSLATE), scale=SCALE, p=1.0),
        K.ColorJitter(brightness=BRIGHTNESS, contrast=CONTRAST, saturation=SATURATION, hue=HUE,
                      p=1.0),
        data_keys=["input", "bbox_xyxy"],
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    tb = torch.from_numpy(boxes)
    out: list = []

    def run() -> None:
        torch.manual_seed(0)
        out.clear()
        for i in range(0, len(x), batch):
            imgs = x[i:i + batch].float().div_(255)
            out.append(seq(imgs, tb[i:i + batch]))

    def check() -> tuple[bool, float]:
        ok, kept = True, 0
        for imgs, b in out:
            ok &= tuple(imgs.shape[1:]) == (3, SIZE, SIZE)
            b = b.reshape(-1, 4).clamp(0, SIZE)
            kept += int(((b[:, 2:] - b[:, :2]) >= 2).all(dim=1).sum())
        return ok, kept / boxes[..., 0].size

    return run, check


def run(quick: bool = False) -> list[Row]:
    """Seconds per 256 images, ours against each peer; see the module docstring."""
    threads = torch.get_num_threads()
    cv2 = _cv2()
    cv2_threads = cv2.getNumThreads() if cv2 is not None else None
    torch.set_num_threads(1)
    if cv2 is not None:
        cv2.setNumThreads(1)
    try:
        return _run(quick)
    finally:
        torch.set_num_threads(threads)
        if cv2 is not None:
            cv2.setNumThreads(cv2_threads)


def _cv2():  # noqa: ANN202 - the module, when installed
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def _run(quick: bool) -> list[Row]:
    n = 32 if quick else 256
    repeat = 1 if quick else 3
    images, boxes, labels = make_data(n)
    per256 = 256 / n

    def timed(pair):  # noqa: ANN001, ANN202
        fn, check = pair
        t = measure(fn, repeat=repeat, warmup=1) * per256
        return t, check()

    goal = ">= 1.0x, 1 thread each; agree = sane boxes"
    ours = {b: timed(_ours(images, boxes, labels, b)) for b in (16, 64)}
    rows: list[Row] = []

    def add(case: str, batch: int, peer: str, result) -> None:  # noqa: ANN001
        (t_ours, (ok_ours, kept_ours)) = ours[batch]
        t_peer, (ok_peer, kept_peer) = result
        rows.append(Row(case, t_ours, peer, t_peer,
                        bool(ok_ours and ok_peer and abs(kept_ours - kept_peer) <= 0.1), goal))

    try:
        alb = timed(_albumentations(images, boxes, labels))
    except ImportError:
        alb = None
    if alb is not None:
        add("flip+affine+color 256px, ours batch 16", 16, "albumentations (per image, uint8)",
            alb)
        add("flip+affine+color 256px, ours batch 64", 64, "albumentations (per image, uint8)",
            alb)
    tv = timed(_torchvision(images, boxes, labels))
    add("flip+affine+color 256px, ours batch 16", 16, "torchvision v2 (per image, uint8)", tv)
    kor = timed(_kornia(images, boxes, labels, 16))
    add("flip+affine+color 256px, ours batch 16", 16, "kornia AugmentationSequential b16", kor)
    if alb is None:
        rows.append(Row("albumentations not installed", float("nan"), "albumentations",
                        float("nan"), False, "pip install albumentations to compare"))
    return rows


if __name__ == "__main__":
    from benchmarks._common import report

    report(TITLE, run())
