"""Benchmark: the NMS family (danlu.boxes.nms / soft_nms / fusion) against its peers.

Input generator (one for every row): ``n`` boxes in a 4096 x 4096 image, centres uniform, widths
and heights uniform in [10, 200] pixels, scores uniform in [0, 1) (float32 for hard NMS, as a
detector emits them), labels uniform over 80 classes where a row is class-aware. 4096 is a power
of two, so normalizing for ensemble-boxes (which wants [0, 1]) is exact and both sides see the
same boxes.

Rows:

- hard NMS, class-aware (80 classes) at 1k / 10k / 100k boxes vs ``torchvision.ops.batched_nms``
  and class-agnostic at 10k / 100k vs ``torchvision.ops.nms``: torch CPU tensors in on both sides
  (our time includes the torch -> numpy conversion). Agreement: the same kept set, and the same
  sequence of kept scores (torchvision orders equal scores with an unstable sort).
- Soft-NMS gaussian and linear at 10k boxes, one class, vs ``ensemble_boxes.soft_nms``
  (``iou_thr`` 0.3, ``sigma`` 0.5, ``thresh`` 0.001). Agreement: the same kept boxes; the scores
  are compared with ensemble-boxes' own kernel read back (it returns undecayed scores).
- WBF at 10k boxes (3 models of ~3.3k jittered copies of the same objects, 80 classes) vs
  ``ensemble_boxes.weighted_boxes_fusion``, ``conf_type="avg"``. Agreement: boxes within 1e-6
  (normalized), scores within 1e-6, labels equal.

Numba compiles during the warm-up run, never inside a timed run. ``quick=True`` shrinks every
size (smoke test).
"""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import torch
import torchvision

from benchmarks._common import Row, measure
from danlu.boxes.fusion import weighted_boxes_fusion
from danlu.boxes.nms import batched_nms, nms
from danlu.boxes.soft_nms import soft_nms

TITLE = "boxes"
IMG = 4096.0


def make_boxes(n: int, seed: int = 0, classes: int = 80) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """``n`` boxes (float64), scores (float64) and labels, as described in the module doc."""
    r = np.random.default_rng(seed)
    c = r.uniform(0, IMG, (n, 2))
    wh = r.uniform(10, 200, (n, 2))
    b = np.clip(np.concatenate([c - wh / 2, c + wh / 2], 1), 0, IMG)
    return b, r.random(n), r.integers(0, classes, n)


def _same_keep(ours: torch.Tensor, peer: torch.Tensor, scores: torch.Tensor) -> bool:
    return (set(ours.tolist()) == set(peer.tolist())
            and torch.equal(scores[ours], scores[peer]))


def _hard_rows(quick: bool) -> list[Row]:
    # a warm process: the kernel loaded (a fresh process's first small call takes the numpy
    # sweep instead; `danlu bench cold` measures that)
    importlib.import_module("danlu.boxes.nms")._kernels()
    rows = []
    sizes = [200, 1000] if quick else [1000, 10_000, 100_000]
    for n in sizes:
        b, s, lab = make_boxes(n)
        tb = torch.from_numpy(b.astype(np.float32))
        ts = torch.from_numpy(s.astype(np.float32))
        tl = torch.from_numpy(lab)
        ours = measure(lambda tb=tb, ts=ts, tl=tl: batched_nms(tb, ts, tl, 0.5), repeat=7)
        peer = measure(lambda tb=tb, ts=ts, tl=tl: torchvision.ops.batched_nms(tb, ts, tl, 0.5),
                       repeat=7)
        agree = _same_keep(batched_nms(tb, ts, tl, 0.5),
                           torchvision.ops.batched_nms(tb, ts, tl, 0.5), ts)
        rows.append(Row(f"batched NMS, 80 classes, {n:,} boxes", ours,
                        "torchvision.ops.batched_nms", peer, agree, "<= 1.0"))
    for n in ([1000] if quick else [10_000, 100_000]):
        b, s, _ = make_boxes(n)
        tb = torch.from_numpy(b.astype(np.float32))
        ts = torch.from_numpy(s.astype(np.float32))
        ours = measure(lambda tb=tb, ts=ts: nms(tb, ts, 0.5), repeat=5)
        slow = n >= 100_000  # torchvision's quadratic loop: ~30 s, measured once
        peer = measure(lambda tb=tb, ts=ts: torchvision.ops.nms(tb, ts, 0.5),
                       repeat=1 if slow else 3, warmup=0 if slow else 1)
        agree = _same_keep(nms(tb, ts, 0.5), torchvision.ops.nms(tb, ts, 0.5), ts)
        rows.append(Row(f"NMS, class-agnostic, {n:,} boxes", ours, "torchvision.ops.nms", peer,
                        agree, ">= 20x"))
    return rows


def _soft_rows(quick: bool) -> list[Row]:
    from ensemble_boxes import soft_nms as eb_soft_nms
    from ensemble_boxes.ensemble_boxes_nms import cpu_soft_nms_float

    rows = []
    n = 1000 if quick else 10_000
    b, s, _ = make_boxes(n, seed=1)
    zeros = np.zeros(n)
    for method, code in (("gaussian", 2), ("linear", 1)):
        def ours(method=method):
            return soft_nms(b, s, method=method, sigma=0.5, iou_threshold=0.3,
                            score_threshold=0.001)

        def peer(code=code):
            return eb_soft_nms([b / IMG], [s], [zeros], method=code, iou_thr=0.3, sigma=0.5,
                               thresh=0.001)

        t_ours = measure(ours, repeat=5)
        t_peer = measure(peer, repeat=3)
        keep, dec = ours()
        eb_boxes, _, _ = peer()
        sc = s.copy()
        ref_keep = cpu_soft_nms_float(b / IMG, sc, Nt=0.3, sigma=0.5, thresh=0.001, method=code)
        agree = (np.array_equal(keep, ref_keep)
                 and np.allclose(dec, sc[sc > 0.001], rtol=1e-9, atol=0)
                 and np.array_equal(np.sort(b[keep] / IMG, axis=0), np.sort(eb_boxes, axis=0)))
        rows.append(Row(f"Soft-NMS {method}, {n:,} boxes", t_ours, "ensemble_boxes.soft_nms",
                        t_peer, agree, ">= 20x"))
    return rows


def _wbf_rows(quick: bool) -> list[Row]:
    from ensemble_boxes import weighted_boxes_fusion as eb_wbf

    n = 1000 if quick else 10_000
    base, _, lab = make_boxes(n // 3, seed=2)
    r = np.random.default_rng(3)
    bl, sl, ll = [], [], []
    for _ in range(3):
        b = np.clip(base + r.normal(0, 5, base.shape), 0, IMG)
        bl.append(np.concatenate([np.minimum(b[:, :2], b[:, 2:]),
                                  np.maximum(b[:, :2], b[:, 2:])], 1))
        sl.append(r.random(len(b)))
        ll.append(lab)
    normalized = [b / IMG for b in bl]

    def ours():
        return weighted_boxes_fusion(bl, sl, ll, iou_threshold=0.55, conf_type="avg")

    def peer():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return eb_wbf(normalized, sl, ll, iou_thr=0.55, conf_type="avg")

    t_ours = measure(ours, repeat=5)
    t_peer = measure(peer, repeat=3)
    (ob, os_, ol), (pb, ps, pl) = ours(), peer()
    agree = (ob.shape == pb.shape and np.allclose(ob / IMG, pb, rtol=0, atol=1e-6)
             and np.allclose(os_, ps, rtol=0, atol=1e-6) and np.array_equal(ol, pl.astype(int)))
    return [Row(f"WBF, 3 models, 80 classes, {n:,} boxes", t_ours,
                "ensemble_boxes.weighted_boxes_fusion", t_peer, agree, ">= 20x")]


def run(quick: bool = False) -> list[Row]:
    """All rows of the table (small sizes with ``quick``)."""
    rows = _hard_rows(quick)
    rows += _soft_rows(quick)
    rows += _wbf_rows(quick)
    from benchmarks.boxes_polygon import polygon_iou_rows

    rows += polygon_iou_rows(quick)
    return rows
