"""The Predictor: from a checkpoint alone, boxes back in each image's pixels, any image input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import danlu
from _data_fixtures import train_tiny_checkpoint
from danlu.data.synth import synthesize
from danlu.errors import DatasetError, ModelError
from danlu.infer.predictor import Predictor, score_threshold_holder
from danlu.models.checkpoint import build_model_from_checkpoint, load_checkpoint
from danlu.models.transform import InputTransform
from danlu.structures import Detections, Sample
from danlu.testing import assert_detections_close


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("pred"))


def _image(w=150, h=90, seed=0):
    return synthesize("shapes", num_images=1, seed=seed, image_size=(w, h),
                      scale_range=(16, 40), encode=False)[0].load_image()


def test_predictor_needs_only_the_checkpoint_and_scales_boxes_back(ckpt):
    p = Predictor(ckpt, device="cpu", score_threshold=0.001)
    assert p.class_names == ["circle", "square", "triangle", "star"] and p.img_size == 64
    img = _image()
    det = p.predict(img)
    assert isinstance(det, Detections) and len(det) > 0 and det.scores is not None
    assert (det.scores >= 0.001).all()
    assert (det.xyxy[:, [0, 2]] <= 150).all() and (det.xyxy[:, [1, 3]] <= 90).all()
    # the same as running the model on the letterboxed image and dividing by the scale
    tensor, frame = InputTransform(64).image(img)
    sx, sy = frame.scale
    raw = p.predict_tensor(tensor[None])[0]
    expected = raw.scale(1 / sx, 1 / sy)
    expected.xyxy = np.clip(expected.xyxy, 0, np.array([150, 90, 150, 90], np.float32))
    b = expected.xyxy  # boxes wholly in the letterbox padding have no area left: dropped
    assert_detections_close(det, expected[(b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])])
    assert Predictor(ckpt.parent, device="cpu").class_names == p.class_names  # a run folder


def test_every_image_input_gives_the_same_detections(ckpt, tmp_path):
    p = Predictor(ckpt, device="cpu", score_threshold=0.001)
    img = _image(seed=3)
    Image.fromarray(img).save(tmp_path / "a.png")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    ref = p.predict(img)
    inputs = [str(tmp_path / "a.png"), tmp_path / "a.png", buf.getvalue(),
              Image.fromarray(img), torch.from_numpy(img).permute(2, 0, 1),
              torch.from_numpy(img).permute(2, 0, 1).float() / 255, Sample(img, 150, 90)]
    for item in inputs:
        assert_detections_close(p.predict(item), ref, atol=1e-3)
    many = p.predict([img, _image(seed=4), img], batch_size=2)
    assert isinstance(many, list) and len(many) == 3
    assert_detections_close(many[0], ref)
    assert_detections_close(many[2], ref)
    with pytest.raises(DatasetError):
        p.predict(np.zeros((4, 4, 7), np.uint8))


def test_predict_dataset_and_a_live_module_agree_with_the_checkpoint(ckpt):
    ds = synthesize("shapes", num_images=3, seed=9, image_size=(80, 64), scale_range=(12, 30),
                    encode=False)
    p = Predictor(ckpt, device="cpu", score_threshold=0.01)
    dets = p.predict_dataset(ds)
    assert len(dets) == 3
    for d, s in zip(dets, ds.samples, strict=True):
        assert_detections_close(d, p.predict(s.load_image()))
    model = build_model_from_checkpoint(load_checkpoint(ckpt))
    holder = score_threshold_holder(model)
    holder.score_thresh = 0.5
    live = Predictor(model, device="cpu", score_threshold=0.01, img_size=64,
                     class_names=p.class_names)
    for d, s in zip(dets, ds.samples, strict=True):
        assert_detections_close(live.predict(s.load_image()), d)
    assert holder.score_thresh == 0.5 and model.training  # restored after predicting


def test_predictor_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        Predictor(tmp_path / "missing.pt", device="cpu")
    with pytest.raises(ModelError, match="img_size"):
        Predictor(torch.nn.Identity(), device="cpu")


def test_danlu_eval_reads_what_danlu_predict_writes(ckpt, tmp_path):
    """`danlu predict` output feeds `danlu eval --pred` directly, with the same numbers as the
    library path (Predictor -> evaluate)."""
    import orjson

    from danlu.cli.main import main
    from danlu.data.io import save_dataset

    gt = synthesize("shapes", num_images=6, seed=7, image_size=(64, 64), scale_range=(12, 28))
    root = save_dataset(gt, tmp_path / "gt", "voc")
    images = sorted(str(p) for p in (root / "JPEGImages").iterdir())
    assert main(["--quiet", "predict", str(ckpt), *images, "--out", str(tmp_path / "p"),
                 "--score-threshold", "0.001"]) == 0
    gt_disk = danlu.load_dataset(root)
    expected = danlu.evaluate(gt_disk, Predictor(ckpt, device="cpu", score_threshold=0.001)
                              .predict_dataset(gt_disk))
    import contextlib

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["eval", "--gt", str(root), "--pred", str(tmp_path / "p" / "predictions.json"),
                     "--json"]) == 0
    got = orjson.loads(buf.getvalue())
    np.testing.assert_allclose(got["stats"], expected.stats, atol=1e-6)


def test_danlu_predict_warns_when_it_finds_nothing(ckpt, tmp_path, capsys):
    from danlu.cli.main import main

    img = tmp_path / "blank.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    assert main(["predict", str(ckpt), str(img), "--out", str(tmp_path / "p"),
                 "--score-threshold", "0.9999", "--no-draw"]) == 0
    assert "warning: 0 detections in 1 images" in capsys.readouterr().err


def test_boxes_wholly_in_the_letterbox_padding_are_dropped():
    """A wide image leaves the bottom of the model's square as padding; a box the model puts
    there lies outside the image and must not come back as a zero-height box on its edge."""
    from danlu.infer.backend import TorchBackend

    class _Fixed(TorchBackend):
        def __init__(self):
            self.transform = InputTransform(64)
            self.class_names = ["a"]
            self.default_iou = self.default_max_detections = None
            self.device = torch.device("cpu")

        def candidates(self, images, score_threshold):
            boxes = [[4, 4, 20, 20], [4, 50, 20, 60]]  # the second is below y = 32
            return [Detections(boxes, [0, 0], scores=[0.9, 0.8]) for _ in images]

    det = Predictor(_Fixed(), score_threshold=0.1).predict(np.zeros((50, 100, 3), np.uint8))
    assert det.xyxy.tolist() == [[6.25, 6.25, 31.25, 31.25]]
