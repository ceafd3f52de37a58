"""The Predictor's post-processing: each choice returns what its oracle returns on the same
candidates (torchvision.ops for hard NMS, ensemble-boxes for Soft-NMS and WBF), and the
default Predictor with ``multi_label=True`` gives exactly what the torchvision detector's own
post-processing gives."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torchvision
from ensemble_boxes import weighted_boxes_fusion as eb_wbf
from ensemble_boxes.ensemble_boxes_nms import cpu_soft_nms_float
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import ConfigError
from danlu.infer.postprocess import PostProcess
from danlu.infer.predictor import Predictor, score_threshold_holder
from danlu.models import build_model
from danlu.structures import Detections

IMG = 1024.0


def candidates(n: int, seed: int, labels: int = 3, size: float = 120.0) -> Detections:
    r = np.random.default_rng(seed)
    c = r.uniform(size, IMG - size, (n, 2))
    wh = r.uniform(size / 8, size, (n, 2))
    xyxy = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
    return Detections(xyxy, r.integers(0, labels, n), scores=r.random(n).astype(np.float32))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 400), st.integers(0, 10_000), st.floats(0.1, 0.9), st.integers(1, 150))
def test_hard_and_agnostic_are_torchvision(n, seed, iou, cap):
    cand = candidates(n, seed)
    b, s, lab = (torch.from_numpy(cand.xyxy), torch.from_numpy(cand.scores),
                 torch.from_numpy(cand.labels))
    hard = PostProcess("hard", iou_threshold=iou, max_detections=cap)(cand)
    keep = torchvision.ops.batched_nms(b, s, lab, iou)[:cap].numpy()
    np.testing.assert_array_equal(hard.xyxy, cand.xyxy[keep])
    np.testing.assert_array_equal(hard.labels, cand.labels[keep])
    agnostic = PostProcess("agnostic", iou_threshold=iou, max_detections=cap)(cand)
    keep = torchvision.ops.nms(b, s, iou)[:cap].numpy()
    np.testing.assert_array_equal(agnostic.xyxy, cand.xyxy[keep])


def _soft_oracle(cand: Detections, method: int, nt: float, sigma: float, thr: float):
    """ensemble-boxes' Soft-NMS kernel per class; (box, decayed score) by decreasing score."""
    boxes, scores = [], []
    for label in np.unique(cand.labels):
        idx = np.flatnonzero(cand.labels == label)
        b = cand.xyxy[idx].astype(np.float64) / IMG
        sc = cand.scores[idx].astype(np.float64).copy()
        keep = cpu_soft_nms_float(b.copy(), sc, Nt=nt, sigma=sigma, thresh=thr, method=method)
        boxes.append(cand.xyxy[idx][keep])
        scores.append(sc[sc > thr])
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


@pytest.mark.parametrize("method,code", [("soft-linear", 1), ("soft-gaussian", 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_soft_nms_is_ensemble_boxes(method, code, seed):
    cand = candidates(300, seed)
    out = PostProcess(method, iou_threshold=0.4, sigma=0.5, score_threshold=0.001,
                      max_detections=0)(cand)
    boxes, scores = _soft_oracle(cand, code, 0.4, 0.5, 0.001)
    assert len(out) == len(boxes)
    np.testing.assert_allclose(out.scores, scores, rtol=1e-6)
    np.testing.assert_array_equal(out.xyxy, boxes)


@pytest.mark.parametrize("iou", [0.4, 0.55])
def test_wbf_of_several_passes_is_ensemble_boxes(iou):
    base = candidates(200, 7)
    r = np.random.default_rng(3)
    passes = []
    for _ in range(3):
        moved = np.clip(base.xyxy + r.normal(0, 3, base.xyxy.shape), 0, IMG).astype(np.float32)
        passes.append(Detections(moved, base.labels, scores=r.random(len(base)).astype(np.float32)))
    out = PostProcess("wbf", iou_threshold=iou, max_detections=0)(passes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b, s, lab = eb_wbf([p.xyxy / IMG for p in passes], [p.scores for p in passes],
                           [p.labels for p in passes], iou_thr=iou, skip_box_thr=0.0)
    assert len(out) == len(b)
    np.testing.assert_allclose(out.xyxy / IMG, b, atol=1e-5)
    np.testing.assert_allclose(out.scores, s, rtol=1e-5)
    np.testing.assert_array_equal(out.labels, lab.astype(np.int64))


def test_merge_methods_and_errors():
    cand = Detections([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]], [0, 0, 1],
                      scores=[0.9, 0.8, 0.7])
    merged = PostProcess("nmm", iou_threshold=0.5)(cand)
    assert len(merged) == 2 and merged.scores[0] == pytest.approx(0.9)
    assert merged.xyxy[0].tolist() == [0, 0, 10, 10]  # the union of the two merged boxes
    assert len(PostProcess("greedy-nmm", iou_threshold=0.5)(cand)) == 2
    assert PostProcess("none")(cand).scores.tolist() == pytest.approx([0.9, 0.8, 0.7])
    assert len(PostProcess("hard", max_detections=1)(cand)) == 1
    with pytest.raises(ConfigError, match="localization"):
        PostProcess("iou-guided")(cand)
    loc = Detections(cand.xyxy, cand.labels, scores=cand.scores,
                     extra={"loc_scores": np.array([0.5, 0.9, 0.7], np.float32)})
    guided = PostProcess("iou-guided", iou_threshold=0.5)(loc)
    assert len(guided) == 2 and guided.scores[0] == pytest.approx(0.9)  # best cls score kept
    with pytest.raises(ConfigError, match="unknown suppression"):
        PostProcess("fancy")


def _canonical(d: Detections) -> np.ndarray:
    rows = np.concatenate([d.labels[:, None], d.scores[:, None], d.xyxy], 1).astype(np.float64)
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("name", ["fcos-tiny", "retinanet-tiny", "fasterrcnn-tiny"])
def test_default_predictor_equals_the_detectors_own_postprocessing(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, img_size=96, weights=None).eval()
    with torch.no_grad():  # a freshly built head scores every anchor alike and predicts the
        for p in model.parameters():  # anchors themselves: spread scores and boxes as a
            p.add_(torch.randn_like(p) * 0.05)  # trained model's are, so no score ties
    holder = score_threshold_holder(model)
    holder.score_thresh = 0.0  # an untrained model: let every candidate through
    images = (torch.rand(2, 3, 96, 96) * 255).to(torch.uint8)
    with torch.inference_mode():
        own = model(list(images.float() / 255))
    p = Predictor(model, device="cpu", score_threshold=0.0, img_size=96, class_names="abc",
                  multi_label=True)  # torchvision keeps every class of a box
    assert p.postprocess.iou_threshold == holder.nms_thresh
    assert p.postprocess.max_detections == holder.detections_per_img
    ours = p.predict_tensor(images)
    for o, d in zip(own, ours, strict=True):
        ref = Detections(o["boxes"], o["labels"], scores=o["scores"])
        assert len(ref) > 0
        np.testing.assert_allclose(_canonical(d), _canonical(ref), rtol=0, atol=1e-5)
    # the model's own settings are back after predicting
    assert holder.nms_thresh < 1 and holder.detections_per_img == p.postprocess.max_detections


@pytest.mark.parametrize("name", ["fcos-tiny", "retinanet-tiny"])
def test_dense_candidates_are_torchvisions_without_its_nms(name):
    """danlu reads FCOS / RetinaNet candidates straight from the heads: the same boxes as
    torchvision's own post-processing with its NMS and cap switched off."""
    torch.manual_seed(1)
    model = build_model(name, num_classes=3, img_size=96, weights=None).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    holder = score_threshold_holder(model)
    holder.score_thresh, holder.nms_thresh, holder.detections_per_img = 0.0, 2.0, 10**6
    images = (torch.rand(2, 3, 96, 96) * 255).to(torch.uint8)
    with torch.inference_mode():
        own = model(list(images.float() / 255))
    holder.nms_thresh, holder.detections_per_img = 0.5, 100
    cands = Predictor(model, device="cpu", score_threshold=0.0, img_size=96).candidates(images)
    for o, c in zip(own, cands, strict=True):
        ref = Detections(o["boxes"], o["labels"], scores=o["scores"])
        np.testing.assert_allclose(_canonical(c), _canonical(ref), rtol=0, atol=1e-5)
        assert ("loc_scores" in c.extra) == name.startswith("fcos")
    if name.startswith("fcos"):  # centerness is a localization score: IoU-guided NMS runs
        p = Predictor(model, device="cpu", score_threshold=0.0, img_size=96, nms="iou-guided")
        out = p.predict_tensor(images)
        assert all(0 < len(d) <= 100 and not d.extra for d in out)
