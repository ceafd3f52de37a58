"""Soft sampling: the weight functions and per-RoI weights against plain references, and the
identity (weight 1 gives the unmodified loss) for Faster R-CNN, RetinaNet and FCOS."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.roi_heads import fastrcnn_loss

from danlu.errors import ConfigError
from danlu.models import build_model
from danlu.train.config import TrainConfig
from danlu.train.heads import install_mining, roi_head_loss
from danlu.train.sampling import parse_soft_sampling


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _piecewise(points, x):
    if x <= points[0][0]:
        return points[0][1]
    for (x0, w0), (x1, w1) in zip(points, points[1:], strict=False):
        if x <= x1:
            return w0 + (x - x0) / (x1 - x0) * (w1 - w0)
    return points[-1][1]


IOUS = [0.0, 0.01, 0.1, 0.2, 0.3, 0.45, 0.5, 0.7, 1.0]


@pytest.mark.parametrize("spec,reference", [
    ("0.5", lambda x: 0.5 if x == 0 else 1.0),
    ("1", lambda x: 1.0),
    ("0:0.25,0.5:1", lambda x: _piecewise([(0, 0.25), (0.5, 1)], x)),
    ("0.1:0.2,0.3:0.5,0.6:1", lambda x: _piecewise([(0.1, 0.2), (0.3, 0.5), (0.6, 1)], x)),
    ("gompertz", lambda x: 0.25 + 0.75 * math.exp(-8 * math.exp(-12 * x))),
    ("gompertz:0.5,4,10", lambda x: 0.5 + 0.5 * math.exp(-4 * math.exp(-10 * x))),
])
def test_weight_functions_match_plain_formulas(spec, reference):
    got = parse_soft_sampling(spec)(torch.tensor(IOUS)).tolist()
    assert got == pytest.approx([reference(x) for x in IOUS], abs=1e-6)


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "a", "0:0.2,0:0.3", "0:2", "gompertz:2,1,1"])
def test_bad_specs_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_soft_sampling(bad)
    with pytest.raises(ConfigError, match="soft-sampling"):
        TrainConfig(soft_sampling=bad)


def test_per_roi_weights_match_a_plain_reference():
    torch.manual_seed(0)
    model = install_mining(build_model("fasterrcnn-tiny", num_classes=2, img_size=64),
                           soft_sampling="0:0.2,0.4:1")
    heads = model.model.roi_heads
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0], [40.0, 40.0, 60.0, 62.0]])
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(300, 2, generator=g) * 50
    proposals = torch.cat([xy, xy + 4 + torch.rand(300, 2, generator=g) * 20], dim=1)
    rois, labels, _, weights = heads._training_rois(
        [proposals], [{"boxes": gt, "labels": torch.tensor([1, 2])}])
    assert len(rois[0]) == len(weights[0]) > 0
    for roi, label, w in zip(rois[0].tolist(), labels[0].tolist(), weights[0].tolist(),
                             strict=True):
        best = max(_iou(roi, g_) for g_ in gt.tolist())
        expected = 1.0 if label > 0 else _piecewise([(0, 0.2), (0.4, 1)], best)
        assert w == pytest.approx(expected, abs=1e-5)
    assert any(w < 1 for w in weights[0].tolist())


def test_unit_weights_give_torchvision_fastrcnn_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 3, generator=g)
    boxes = torch.randn(40, 12, generator=g)
    labels = torch.randint(0, 3, (40,), generator=g)
    targets = torch.randn(40, 4, generator=g)
    expected = fastrcnn_loss(logits, boxes, [labels], [targets])
    got = roi_head_loss(logits, boxes, labels, targets, torch.ones(40))
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1])
    halved = roi_head_loss(logits, boxes, labels, targets, torch.full((40,), 0.5))
    torch.testing.assert_close(halved[0], expected[0] * 0.5)


def _images(n=2):
    g = torch.Generator().manual_seed(3)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(n)]
    targets = [{"boxes": torch.tensor([[6.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
               for _ in range(n)]
    return images, targets


@pytest.mark.parametrize("name", ["fasterrcnn-tiny", "retinanet-tiny", "fcos-tiny"])
def test_weight_one_equals_the_unmodified_loss_and_lower_weights_lower_it(name):
    torch.manual_seed(0)
    plain = build_model(name, num_classes=2, img_size=64)
    soft = build_model(name, num_classes=2, img_size=64)
    soft.load_state_dict(plain.state_dict())
    install_mining(soft, soft_sampling="1")
    images, targets = _images()
    torch.manual_seed(5)  # Faster R-CNN samples RoIs and anchors at random
    base = plain(images, targets)
    torch.manual_seed(5)
    same = soft(images, targets)
    assert base.keys() == same.keys()
    for k in base:
        torch.testing.assert_close(same[k], base[k], msg=k)
    cls = "loss_classifier" if name.startswith("faster") else "classification"
    soft_sampling = "0.25"
    install_mining(soft, soft_sampling=soft_sampling)
    torch.manual_seed(5)
    lower = soft(images, targets)
    assert lower[cls] < base[cls]
    sum(lower.values()).backward()
