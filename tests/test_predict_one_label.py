"""One label per box at predict time (issue 11): the same box found under several classes
comes back once, with its best class (torchvision.ops.nms at IoU > 0.7 over the multi-label
output is the oracle); ``multi_label=True`` keeps every class; the tiles of sliced prediction,
TTA and ``danlu predict`` follow it; training validation keeps every class; the best box is
drawn on top with a readable caption; ``danlu predict`` without ``--out`` writes to
``runs/predict/N``."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from shapely.geometry import Polygon
from tests._cli import danlu

from _data_fixtures import train_tiny_checkpoint
from danlu.data.show import class_colour, draw_detections
from danlu.infer.postprocess import ONE_LABEL_IOU, PostProcess, one_label_per_box
from danlu.infer.predictor import Predictor
from danlu.infer.run import next_predict_dir
from danlu.models.transform import InputTransform
from danlu.structures import Detections

CLASSES = ["circle", "square", "triangle", "star"]


def _tv_one_label(det: Detections) -> Detections:
    """The oracle: torchvision's class-agnostic NMS at IoU > 0.7, survivors in ``det``'s
    order."""
    if len(det) == 0:
        return det
    keep = torchvision.ops.nms(torch.from_numpy(det.xyxy).double(),
                               torch.from_numpy(det.scores).double(), ONE_LABEL_IOU).numpy()
    return det[np.sort(keep)]


def _cross_class_pairs(det: Detections, thr: float = ONE_LABEL_IOU) -> int:
    if len(det) < 2:
        return 0
    iou = torchvision.ops.box_iou(torch.from_numpy(det.xyxy), torch.from_numpy(det.xyxy))
    other = det.labels[:, None] != det.labels[None, :]
    return int(np.triu((iou.numpy() > thr) & other, 1).sum())


class _Fixed:
    """A backend without an input transform whose candidates are given."""

    class_names = CLASSES
    transform = None
    default_iou = None
    default_max_detections = None
    device = torch.device("cpu")

    def __init__(self, cand: Detections) -> None:
        self.cand = cand

    def candidates(self, images, score_threshold):
        return [self.cand.filter(min_score=score_threshold) for _ in images]


# a star found as a star (0.50), a circle (0.36) and a square (0.30), the same box (one
# anchor); a square beside it (IoU ~0.47 with the star: a different object); a triangle box
# shifted a little from the star (IoU ~0.82: a neighbouring point's copy)
STAR = [20.0, 20.0, 60.0, 60.0]
CAND = Detections([STAR, STAR, STAR, [40, 20, 80, 60], [22, 22, 62, 62]], [3, 0, 1, 1, 2],
                  scores=[0.5, 0.36, 0.30, 0.45, 0.40])


def test_the_same_box_under_two_classes_comes_back_once_with_the_best_class():
    image = np.zeros((100, 100, 3), np.uint8)
    one = Predictor(_Fixed(CAND), score_threshold=0.1).predict(image)
    multi = Predictor(_Fixed(CAND), score_threshold=0.1, multi_label=True).predict(image)
    # multi-label: class-aware NMS, torchvision's own
    keep = torchvision.ops.batched_nms(torch.from_numpy(CAND.xyxy), torch.from_numpy(CAND.scores),
                                       torch.from_numpy(CAND.labels), 0.5).numpy()
    np.testing.assert_array_equal(multi.labels, CAND.labels[keep])
    assert sorted(multi.labels.tolist()) == [0, 1, 1, 2, 3]
    # one label: the star stays a star; the neighbouring square (a different object) stays
    assert one.labels.tolist() == [3, 1]
    assert one.scores.tolist() == pytest.approx([0.5, 0.45])
    np.testing.assert_array_equal(one.xyxy, _tv_one_label(multi).xyxy)


def test_a_real_detector_one_label_is_torchvisions_agnostic_nms_of_its_multi_label(tmp_path):
    ckpt = train_tiny_checkpoint(tmp_path)
    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=4, seed=11, image_size=(64, 64), scale_range=(12, 28),
                    encode=False)
    tensors = torch.stack([InputTransform(64).image(s.load_image())[0] for s in ds.samples])
    kw = {"device": "cpu", "score_threshold": 0.05, "max_detections": 1000}  # no cap binds
    one = Predictor(ckpt, **kw).predict_tensor(tensors)  # the model's square: no clipping
    multi = Predictor(ckpt, multi_label=True, **kw).predict_tensor(tensors)
    assert sum(map(len, one)) < sum(map(len, multi))  # FCOS repeats boxes across classes
    for o, m in zip(one, multi, strict=True):
        want = _tv_one_label(m)
        np.testing.assert_array_equal(o.xyxy, want.xyxy)
        np.testing.assert_array_equal(o.labels, want.labels)
        assert _cross_class_pairs(o) == 0
    # test-time augmentation: the fused passes get one label per box too
    tta = Predictor(ckpt, device="cpu", score_threshold=0.05, tta=True)
    for s in ds.samples:
        assert _cross_class_pairs(tta.predict(s.load_image())) == 0


def _candidates(data, n: int) -> Detections:
    """``n`` random boxes, and for some of them copies (jittered or not) under other
    classes with other scores: what a dense detector gives."""
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    c = rng.uniform(20, 200, (n, 2))
    wh = rng.uniform(8, 60, (n, 2))
    xyxy = np.concatenate([c - wh / 2, c + wh / 2], 1)
    labels = rng.integers(0, 4, n)
    copies = rng.random(n) < data.draw(st.floats(0.0, 1.0))
    jitter = rng.normal(0, data.draw(st.sampled_from([0.0, 1.0, 4.0])), (int(copies.sum()), 4))
    xyxy = np.concatenate([xyxy, xyxy[copies] + jitter]).astype(np.float32)
    xyxy[:, 2:] = np.maximum(xyxy[:, 2:], xyxy[:, :2] + 1)
    labels = np.concatenate([labels, (labels[copies] + rng.integers(1, 4, int(copies.sum())))
                             % 4])
    return Detections(xyxy, labels, scores=rng.random(len(xyxy)).astype(np.float32))


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(0, 120), st.sampled_from(["hard", "agnostic", "soft-gaussian",
                                                         "greedy-nmm", "wbf"]),
       st.integers(0, 40))
def test_one_label_output_is_a_subset_without_cross_class_duplicates(data, n, method, cap):
    cand = _candidates(data, n)
    one = PostProcess(method, iou_threshold=0.5, max_detections=cap, multi_label=False)(cand)
    multi = PostProcess(method, iou_threshold=0.5, max_detections=0)(cand)  # the default
    assert _cross_class_pairs(one) == 0
    # a subset of the uncapped multi-label output: exactly its torchvision oracle, then the cap
    rows = {(tuple(b), int(k), float(s)) for b, k, s in
            zip(multi.xyxy.tolist(), multi.labels.tolist(), multi.scores.tolist(), strict=True)}
    assert all((tuple(b), int(k), float(s)) in rows for b, k, s in
               zip(one.xyxy.tolist(), one.labels.tolist(), one.scores.tolist(), strict=True))
    want = _tv_one_label(multi)
    want = want[:cap] if cap else want
    np.testing.assert_array_equal(one.xyxy, want.xyxy)
    np.testing.assert_array_equal(one.labels, want.labels)


def test_oriented_boxes_use_polygon_iou():
    def rotated(cx, cy, w, h, deg):
        t = np.deg2rad(deg)
        r = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
        return corners @ r.T + [cx, cy]

    a = rotated(50, 50, 60, 20, 30)
    near = rotated(52, 50, 60, 20, 30)  # shifted along the long side
    across = rotated(50, 50, 60, 20, 120)  # the same centre, crossing it
    polys = np.stack([a, a, near, across]).astype(np.float32)
    det = Detections(None, [0, 1, 2, 3], scores=[0.9, 0.8, 0.7, 0.6], polygons=polys)
    ious = [Polygon(a).intersection(Polygon(p)).area / Polygon(a).union(Polygon(p)).area
            for p in (near, across)]
    assert ious[0] > ONE_LABEL_IOU > ious[1]  # the oracle: shapely
    assert one_label_per_box(det).labels.tolist() == [0, 3]
    assert len(PostProcess("hard", multi_label=True)(det)) == 4


class _TwoClassBlobs:
    """A detector that sees every non-black region of the image as a star (0.9) and, the very
    same box, as a circle (0.6)."""

    class_names = CLASSES
    transform = None
    default_iou = None
    default_max_detections = None
    device = torch.device("cpu")

    def candidates(self, images, score_threshold):
        from scipy import ndimage

        out = []
        for im in images:
            labels, n = ndimage.label(im.max(axis=2) > 0)
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop]
                     for s in ndimage.find_objects(labels)]
            b = np.asarray(boxes, np.float32).reshape(-1, 4)
            out.append(Detections(np.concatenate([b, b]), [3] * n + [0] * n,
                                  scores=[0.9] * n + [0.6] * n))
        return out


def test_sliced_prediction_gives_one_label_per_object_across_tiles():
    from danlu.infer.slicing import sliced_predict

    img = np.zeros((300, 400, 3), np.uint8)
    for x, y in ((30, 30), (150, 90), (250, 200), (90, 180), (330, 40)):  # some on seams
        img[y:y + 40, x:x + 50] = 200
    one = sliced_predict(Predictor(_TwoClassBlobs(), score_threshold=0.1), img,
                         slice_size=128, overlap=0.25)
    multi = sliced_predict(Predictor(_TwoClassBlobs(), score_threshold=0.1, multi_label=True),
                           img, slice_size=128, overlap=0.25)
    assert len(one) == 5 and set(one.labels.tolist()) == {3}
    assert len(multi) == 10 and sorted(multi.labels.tolist()) == [0] * 5 + [3] * 5


def test_training_validation_keeps_every_class(monkeypatch):
    import danlu.infer.predictor as predictor_module
    from danlu.train.validation import Validator

    made = {}

    class Recording(predictor_module.Predictor):
        def __init__(self, model, **kw):
            made.update(kw)
            super().__init__(model, **kw)

    monkeypatch.setattr(predictor_module, "Predictor", Recording)
    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=1, seed=0, image_size=(64, 64), scale_range=(12, 28),
                    encode=False)
    Validator(ds)(_Fixed(CAND), "cpu")
    assert made["multi_label"] is True


# -- drawing --------------------------------------------------------------------------------------
def test_the_best_box_and_its_caption_are_drawn_on_top():
    img = np.zeros((96, 96, 3), np.uint8)
    box = [20, 40, 60, 80]
    star, circle = class_colour(3), class_colour(0)
    for order in ((0, 1), (1, 0)):  # whatever the input order
        det = Detections([box, box], [3, 0], scores=[0.5, 0.36])[list(order)]
        out = draw_detections(img, det, CLASSES)
        assert tuple(out[60, 20]) == star  # the left edge of the outline: the star's
        # the star's caption in the place above the box; the circle's moved down under it,
        # inside the box, both whole
        assert tuple(out[39, 20]) == star
        below = [tuple(out[y, 20]) for y in range(41, 70)]
        assert circle in below
        # readable: the red label carries white text, the blue one white as well
        top = out[25:40, 20:60].reshape(-1, 3)
        assert (top.min(axis=1) > 230).any()


def test_captions_stay_inside_the_image():
    img = np.zeros((64, 96, 3), np.uint8)
    det = Detections([[5, 0, 40, 30], [80, 30, 96, 60]], [1, 2], scores=[0.9, 0.8])
    out = draw_detections(img, det, CLASSES)
    assert tuple(out[5, 6]) == class_colour(1)  # no room above: just inside the box's top
    assert tuple(out[29, 95]) == class_colour(2)  # pushed left to end at the right edge
    assert tuple(out[29, 70]) == class_colour(2)


# -- danlu predict ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two runs of `danlu predict` without --out in one folder: one label (the default), then
    --multi-label --json."""
    from danlu.data.synth import synthesize

    root = tmp_path_factory.mktemp("one_label")
    ckpt = train_tiny_checkpoint(root / "model")
    ds = synthesize("shapes", num_images=3, seed=5, image_size=(64, 64), scale_range=(12, 28),
                    encode=False)
    (root / "imgs").mkdir()
    for i, s in enumerate(ds.samples):
        Image.fromarray(s.load_image()).save(root / "imgs" / f"{i}.png")
    first = danlu("predict", str(ckpt), "imgs", "--score-threshold", "0.05", cwd=root)
    second = danlu("predict", str(ckpt), "imgs", "--score-threshold", "0.05", "--multi-label",
                   "--json", cwd=root)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    (root / "first.err").write_text(first.stderr)
    (root / "second.err").write_text(second.stderr)
    (root / "second.out").write_text(second.stdout)
    return root


def test_predict_without_out_writes_runs_predict_n_and_says_so(runs):
    folder = runs / "runs" / "predict"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2"]
    for n in ("1", "2"):
        assert (folder / n / "predictions.json").is_file()
        assert len(list((folder / n / "images").glob("*.png"))) == 3
    assert "runs/predict/1" in (runs / "first.err").read_text()
    assert "runs/predict/2" in (runs / "second.err").read_text()  # with --json too
    json.loads((runs / "second.out").read_text())  # stdout stays the document alone


def test_predict_gives_one_label_unless_multi_label(runs):
    def dets(n):
        doc = json.loads((runs / "runs" / "predict" / n / "predictions.json").read_text())
        return doc, [Detections.from_dict(im["detections"]) for im in doc["images"]]

    one_doc, one = dets("1")
    multi_doc, multi = dets("2")
    assert one_doc["multi_label"] is False and multi_doc["multi_label"] is True
    assert sum(map(len, one)) < sum(map(len, multi))
    assert all(_cross_class_pairs(d) == 0 for d in one)
    assert any(_cross_class_pairs(d) > 0 for d in multi)


def test_next_predict_dir_gives_concurrent_runs_their_own_folder(tmp_path):
    (tmp_path / "predict" / "7").mkdir(parents=True)
    (tmp_path / "predict" / "notes").mkdir()
    got: list[Path] = []
    threads = [threading.Thread(target=lambda: got.append(next_predict_dir(tmp_path / "predict")))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(int(p.name) for p in got) == list(range(8, 16))
