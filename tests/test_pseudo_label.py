"""Pseudo-labels: a fake teacher with known boxes, the COCO round trip of the ``pseudo`` flag,
and ``danlu pseudo-label`` with a real tiny checkpoint."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from danlu.cli.main import main
from danlu.data.io import load_dataset, save_dataset
from danlu.errors import ConfigError
from danlu.structures import Dataset, Detections, Sample
from danlu.train.pseudo import load_pseudo_labels, pseudo_label, save_pseudo_labels


class FakeTeacher:
    """Returns fixed detections per image (filtered by the threshold, as Predictor does)."""

    def __init__(self, dets):
        self.dets = dets
        self.calls = []

    def predict_dataset(self, ds, *, score_threshold=None):
        self.calls.append(score_threshold)
        return [d.filter(min_score=score_threshold) for d in self.dets]


def _dataset():
    img = np.zeros((64, 64, 3), np.uint8)
    a = Detections([[0, 0, 20, 20], [30, 30, 50, 50]], [0, 1])
    b = Detections.empty()
    return Dataset([Sample(img, 64, 64, a, id=1), Sample(img, 64, 64, b, id=2)], ["cat", "dog"])


TEACHER = [
    Detections([[1, 1, 20, 20],      # same class as a label, IoU 0.9: not new
                [30, 30, 50, 50],    # overlaps the dog label exactly, but says cat: new
                [40, 0, 60, 20],     # nothing there: new
                [0, 40, 20, 60]],    # nothing there, but scores too low
               [0, 0, 1, 1], scores=[0.95, 0.8, 0.75, 0.5]),
    Detections([[10, 10, 30, 30]], [1], scores=[0.9]),
]


def test_fake_teacher_adds_confident_unmatched_boxes():
    ds = _dataset()
    teacher = FakeTeacher(TEACHER)
    out = pseudo_label(teacher, ds, score=0.7, iou=0.5)
    assert teacher.calls == [0.7]
    d0, d1 = out[0].detections, out[1].detections
    assert d0.xyxy.tolist() == [[0, 0, 20, 20], [30, 30, 50, 50], [30, 30, 50, 50],
                                [40, 0, 60, 20]]
    assert d0.labels.tolist() == [0, 1, 0, 1]
    assert d0.flag("pseudo").tolist() == [False, False, True, True]
    assert d0.scores is None  # ground truth stays ground truth
    ps = d0.extra["pseudo_score"]
    assert math.isnan(ps[0]) and math.isnan(ps[1]) and ps[2:].tolist() == pytest.approx([0.8,
                                                                                         0.75])
    assert d1.xyxy.tolist() == [[10, 10, 30, 30]] and d1.flag("pseudo").tolist() == [True]
    assert out.meta["pseudo_label"]["added"] == 3
    assert len(ds[0].detections) == 2  # the input is unchanged


def test_class_agnostic_and_thresholds():
    ds = _dataset()
    agnostic = pseudo_label(FakeTeacher(TEACHER), ds, score=0.7, iou=0.5, class_agnostic=True)
    assert agnostic[0].detections.flag("pseudo").sum() == 1  # the cat-on-dog box is not new
    strict = pseudo_label(FakeTeacher(TEACHER), ds, score=0.9, iou=0.5)
    assert strict.meta["pseudo_label"]["added"] == 1  # only image 2's box scores >= 0.9
    loose = pseudo_label(FakeTeacher(TEACHER), ds, score=0.7, iou=0.95)
    assert loose[0].detections.flag("pseudo").sum() == 3  # IoU 0.9 < 0.95 counts as new
    with pytest.raises(ConfigError):
        pseudo_label(FakeTeacher(TEACHER), ds, score=1.5)


def test_coco_round_trip_keeps_the_flag(tmp_path):
    out = pseudo_label(FakeTeacher(TEACHER), _dataset(), score=0.7, iou=0.5)
    path = save_pseudo_labels(out, tmp_path / "union")
    doc = orjson.loads((path / "annotations.json").read_bytes())
    assert sum(a.get("pseudo", 0) for a in doc["annotations"]) == 3
    assert sorted(a["pseudo_score"] for a in doc["annotations"] if "pseudo" in a) == \
        pytest.approx([0.75, 0.8, 0.9])
    back = load_pseudo_labels(path)
    for s, t in zip(back.samples, out.samples, strict=True):
        assert s.detections.xyxy.tolist() == t.detections.xyxy.tolist()
        assert s.detections.flag("pseudo").tolist() == t.detections.flag("pseudo").tolist()
    assert back.meta["pseudo_label"]["added"] == 3
    plain = load_dataset(path)  # any COCO reader sees the union
    assert plain.num_boxes == 5  # 2 labelled + 3 pseudo


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    import danlu
    from danlu.data.synth import synthesize

    root = tmp_path_factory.mktemp("pseudo")
    ds = synthesize("shapes", num_images=8, seed=2, image_size=(64, 64), scale_range=(14, 28))
    save_dataset(ds, root / "data", "coco")
    result = danlu.train(ds, model="fcos-tiny", epochs=1, out=root / "teacher", batch=4,
                         img_size=64, device="cpu", val_split=0, plots=False, final_eval=False,
                         verbose=False)
    return root, result.best


def test_cli_with_a_real_checkpoint(teacher_run, capsys):
    root, best = teacher_run
    out = root / "union"
    code = main(["pseudo-label", "--model", str(best), "--data", str(root / "data"),
                 "--score", "0.0", "--iou", "0.5", "--out", str(out), "--device", "cpu",
                 "--json"])
    assert code == 0
    summary = orjson.loads(capsys.readouterr().out)
    original = load_dataset(root / "data")
    union = load_pseudo_labels(out)
    assert summary["labelled"] == original.num_boxes
    assert union.num_boxes == original.num_boxes + summary["pseudo"]
    assert summary["pseudo"] > 0  # an untrained-ish teacher finds plenty above score 0
    for s, o in zip(union.samples, original.samples, strict=True):
        d = s.detections
        keep = ~d.flag("pseudo")
        assert np.allclose(d.xyxy[keep], o.detections.xyxy)
        assert np.all(d.extra["pseudo_score"][~keep] >= 0.0)
    # the same library call gives the same result
    from danlu.infer.predictor import Predictor

    again = pseudo_label(Predictor(best, device="cpu"), original, score=0.0, iou=0.5)
    assert again.meta["pseudo_label"]["added"] == summary["pseudo"]
    assert main(["pseudo-label", "--model", str(best), "--data", str(root / "data"),
                 "--out", str(out), "--device", "cpu"]) == 2  # refuses to overwrite
