"""Detector builders: every name builds, trains a step, predicts dataset labels, round-trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.models import resnet18
from torchvision.ops import FrozenBatchNorm2d

from danlu.errors import ConfigError, ModelError
from danlu.models import (
    Detector,
    TinyBackbone,
    anchor_levels,
    anchor_sizes_for,
    anchor_sizes_from_boxes,
    available_models,
    build_model,
    expand_anchor_sizes,
    load_weights,
    model_config,
    model_label_offset,
)

SIZE = 128
NUM_CLASSES = 3
# forward passes of these are slow on 2 CPU cores: built only
HEAVY = {"fasterrcnn-resnet50", "retinanet-resnet50", "fcos-resnet50", "retinanet-resnet34",
         "fcos-resnet34", "fasterrcnn-mobilenet_v3_large"}
# options that make an untrained model emit many boxes, to see their labels
LOW_THRESH = {"fcos": {"score_thresh": 0.01, "topk_candidates": 50},
              "retinanet": {"score_thresh": 0.01, "topk_candidates": 50},
              "fasterrcnn": {"box_score_thresh": 0.0, "box_detections_per_img": 2000},
              "ssdlite": {"score_thresh": 0.0, "detections_per_img": 2000}}


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, SIZE, SIZE, generator=g) for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]),
         "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[30.0, 30.0, 90.0, 100.0]]), "labels": torch.tensor([1])},
    ]
    return images, targets


@pytest.mark.parametrize("name", available_models())
def test_every_model_builds(name: str) -> None:
    model = build_model(name, NUM_CLASSES, img_size=SIZE)
    assert isinstance(model, Detector)
    assert model.training
    assert model.label_offset == model_label_offset(name)
    cfg = model_config(model)
    assert cfg["name"] == name and cfg["num_classes"] == NUM_CLASSES and cfg["img_size"] == SIZE
    json.dumps(cfg)  # plain values only
    assert model.model.transform.min_size == (SIZE,) and model.model.transform.max_size == SIZE


@pytest.mark.parametrize("name", [n for n in available_models() if n not in HEAVY])
def test_train_step_and_eval_labels(name: str) -> None:
    torch.manual_seed(0)
    family = name.split("-")[0]
    model = build_model(name, NUM_CLASSES, img_size=SIZE, **LOW_THRESH[family])
    images, targets = _batch()
    losses = model(images, targets)
    assert isinstance(losses, dict) and losses
    total = sum(losses.values())
    assert all(torch.isfinite(v) for v in losses.values()), losses
    total.backward()
    assert any(p.grad is not None for p in model.parameters())
    # inputs are not modified by the label shift
    assert targets[0]["labels"].tolist() == [0, 2]
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2
    labels = torch.cat([d["labels"] for d in out])
    assert len(labels) > 0
    assert int(labels.min()) >= 0 and int(labels.max()) <= NUM_CLASSES - 1
    if model_label_offset(name):
        # without the shift, label 0 (background) would never be predicted
        assert 0 in labels.tolist()
    for d in out:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"])


class _Recorder(torch.nn.Module):
    """Stands in for a torchvision model: records targets, predicts fixed model labels."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list = []

    def forward(self, images, targets=None):  # noqa: ANN001, ANN201
        if self.training:
            self.seen.append([t["labels"].tolist() for t in targets])
            return {"loss": torch.zeros(())}
        return [{"boxes": torch.zeros(2, 4), "scores": torch.ones(2),
                 "labels": torch.tensor([1, 3])} for _ in images]


@pytest.mark.parametrize("offset", [0, 1])
def test_detector_shifts_labels_both_ways(offset: int) -> None:
    inner = _Recorder()
    det = Detector(inner, {"name": "x", "num_classes": 3}, offset)
    det([torch.zeros(3, 8, 8)], [{"boxes": torch.zeros(2, 4), "labels": torch.tensor([0, 2])}])
    assert inner.seen[0] == [[0 + offset, 2 + offset]]
    det.eval()
    out = det(torch.zeros(1, 3, 8, 8))
    assert out[0]["labels"].tolist() == [1 - offset, 3 - offset]


def test_label_offsets() -> None:
    assert model_label_offset("fasterrcnn-tiny") == 1
    assert model_label_offset("ssdlite-mobilenet_v3_large") == 1
    assert model_label_offset("fcos-tiny") == 0
    assert model_label_offset("retinanet-resnet18") == 0
    built = build_model("fasterrcnn-tiny", NUM_CLASSES, img_size=SIZE)
    assert built.model.roi_heads.box_predictor.cls_score.out_features == NUM_CLASSES + 1
    built = build_model("fcos-tiny", NUM_CLASSES, img_size=SIZE)
    assert built.model.head.classification_head.num_classes == NUM_CLASSES


def test_state_dict_round_trip(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(1)
    model = build_model("fcos-tiny", 2, img_size=64, score_thresh=0.0).eval()
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    again = build_model(**model.config, weights=str(path)).eval()
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(),
                               strict=True):
        assert k == k2 and torch.equal(a, b), k
    x = [torch.rand(3, 64, 64)]
    with torch.no_grad():
        a, b = model(x)[0], again(x)[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
    # the bare torchvision state dict and a checkpoint dict load too
    torch.save(model.model.state_dict(), path)
    load_weights(build_model("fcos-tiny", 2, img_size=64), str(path))
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    load_weights(build_model("fcos-tiny", 2, img_size=64), str(path))


def test_wrong_weights_raise(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "w.pt"
    torch.save(build_model("fcos-tiny", 2).state_dict(), path)
    with pytest.raises(ModelError):
        build_model("fcos-tiny", 5, weights=str(path))
    with pytest.raises(ModelError):
        build_model("retinanet-tiny", 2, weights=str(path))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError):
        build_model("fcos-tiny", 2, weights=str(tmp_path / "bad.pt"))
    with pytest.raises(ModelError):
        build_model("fcos-tiny", 2, weights="DEFAULT")  # torchvision has no COCO fcos-tiny


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError):
        build_model("yolo-huge", 2)
    with pytest.raises(ConfigError):
        build_model("fcos-tiny", 0)
    with pytest.raises(ConfigError):
        build_model("retinanet-tiny", 2, anchor_sizes=(16, 32))  # 5 levels needed


def test_backbone_weights_from_path(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(2)
    body = TinyBackbone()
    torch.save(body.state_dict(), tmp_path / "tiny.pt")
    model = build_model("fcos-tiny", 2, backbone_weights=str(tmp_path / "tiny.pt"))
    got = model.model.backbone.body.stage1[0][0].weight
    assert torch.equal(got, body.stage1[0][0].weight)

    net = resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pt")
    model = build_model("retinanet-resnet18", 2, backbone_weights=str(tmp_path / "r18.pt"))
    assert torch.equal(model.model.backbone.body.layer1[0].conv1.weight,
                       net.layer1[0].conv1.weight)
    # pretrained backbones freeze BatchNorm and the stem, as torchvision does
    assert not model.model.backbone.body.conv1.weight.requires_grad
    assert model.config["frozen_bn"] is True
    # ... and the config rebuilds that architecture without the weights file
    again = build_model(**model.config)
    assert isinstance(again.model.backbone.body.bn1, FrozenBatchNorm2d)
    again.load_state_dict(model.state_dict())
    assert build_model("retinanet-resnet18", 2).config["frozen_bn"] is False


def test_anchor_sizes_from_boxes() -> None:
    rng = np.random.default_rng(0)
    wh = rng.uniform(8, 100, (500, 2))
    sizes = anchor_sizes_from_boxes(wh, 5)
    s = np.sqrt(wh.prod(axis=1))
    assert len(sizes) == 5 and list(sizes) == sorted(sizes)
    assert sizes[0] == pytest.approx(np.quantile(s, 0.02), abs=0.05)
    assert sizes[-1] == pytest.approx(np.quantile(s, 0.98), abs=0.05)
    # all boxes the same size: levels still increase by min_ratio
    same = anchor_sizes_from_boxes(np.full((10, 2), 32.0), 3, min_ratio=2.0)
    assert same == (32.0, 64.0, 128.0)
    assert anchor_sizes_from_boxes(np.array([[10.0, 40.0]]), 1, scale=0.5) == (10.0,)
    with pytest.raises(ConfigError):
        anchor_sizes_from_boxes(np.zeros((3, 2)), 3)
    assert expand_anchor_sizes((10.0,), "fasterrcnn") == ((10.0,),)
    assert expand_anchor_sizes([[1, 2], [3]], "retinanet") == ((1.0, 2.0), (3.0,))


def test_anchor_sizes_reach_the_model() -> None:
    wh = np.random.default_rng(1).uniform(6, 60, (200, 2))
    for name in ("retinanet-tiny", "fasterrcnn-tiny", "fasterrcnn-mobilenet_v3_large_320_fpn"):
        sizes = anchor_sizes_for(name, wh)
        assert len(sizes) == anchor_levels(name)
        model = build_model(name, 2, img_size=SIZE, anchor_sizes=sizes)
        gen = (model.model.rpn.anchor_generator if name.startswith("fasterrcnn")
               else model.model.anchor_generator)
        assert [lv[0] for lv in gen.sizes] == pytest.approx(list(sizes))
        again = build_model(**model.config)  # nested sizes from the config
        assert again.config == model.config
    assert anchor_sizes_for("fcos-tiny", wh) is None
    assert anchor_sizes_for("ssdlite-mobilenet_v3_large", wh) is None


def test_tiny_anchor_model_trains_with_data_anchors() -> None:
    torch.manual_seed(0)
    images, targets = _batch()
    wh = torch.cat([t["boxes"][:, 2:] - t["boxes"][:, :2] for t in targets]).numpy()
    model = build_model("retinanet-tiny", NUM_CLASSES, img_size=SIZE,
                        anchor_sizes=anchor_sizes_for("retinanet-tiny", wh))
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_fcos_head_depth_is_recorded_and_rebuilt() -> None:
    tiny = build_model("fcos-tiny", num_classes=NUM_CLASSES, img_size=SIZE)
    assert tiny.config["head_convs"] == 2
    # torchvision's FCOS tower: conv + GroupNorm + ReLU per layer
    assert len(tiny.model.head.classification_head.conv) == 2 * 3
    deep = build_model("fcos-tiny", num_classes=NUM_CLASSES, img_size=SIZE, head_convs=4)
    assert len(deep.model.head.regression_head.conv) == 4 * 3
    again = build_model(**deep.config)
    again.load_state_dict(deep.state_dict())  # same architecture
    with pytest.raises(ConfigError, match="FCOS option"):
        build_model("retinanet-tiny", num_classes=NUM_CLASSES, head_convs=2)
    with pytest.raises(ConfigError, match="head_convs=0"):
        build_model("fcos-tiny", num_classes=NUM_CLASSES, head_convs=0)


def test_tiny_backbone_depths() -> None:
    body = TinyBackbone(depths=(1, 1, 2, 3, 1))
    assert [len(getattr(body, f"stage{i}")) for i in range(1, 6)] == [1, 1, 2, 3, 1]
    assert body(torch.rand(1, 3, 64, 64)).shape == (1, 128, 2, 2)
    with pytest.raises(ModelError, match="depths"):
        TinyBackbone(depths=(1, 0, 2, 2, 2))


def test_conv_detectors_are_channels_last_and_match_contiguous_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("fcos-tiny", num_classes=NUM_CLASSES, img_size=SIZE,
                        **LOW_THRESH["fcos"]).eval()
    conv = model.model.backbone.body.stage2[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    images, _ = _batch()
    with torch.no_grad():
        got = model(images)
        model.to(memory_format=torch.contiguous_format)
        want = model(images)
    for g, w in zip(got, want, strict=True):
        assert len(w["scores"]) > 0
        torch.testing.assert_close(g["scores"], w["scores"], rtol=1e-4, atol=1e-5)
