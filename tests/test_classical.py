"""The Haar cascades as danlu models: OpenCV's own boxes, through the Predictor, evaluated.

The oracle is ``cv2.CascadeClassifier.detectMultiScale`` called directly with the same settings;
the reference face box was drawn on the photograph (``danlu.data.show.draw_detections``) and
checked by eye: the face from the forehead under the hairline to the chin, cheek to cheek.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.data import astronaut, coffee, coins

from danlu.boxes.iou import box_iou
from danlu.errors import ConfigError, DatasetError, ModelError
from danlu.evaluate import evaluate
from danlu.infer.predictor import Predictor, to_rgb_array
from danlu.models.classical import (
    HaarCascade,
    available_cascades,
    cascade_class_name,
    cascade_path,
    neighbour_score,
)
from danlu.structures import Dataset, Detections, Sample

#: Eileen Collins's face in skimage.data.astronaut(), xyxy pixels, established by hand
REFERENCE_FACE = np.array([[181, 80, 270, 178]], np.float32)

SHIPPED = ["eye", "eye_tree_eyeglasses", "frontalcatface", "frontalcatface_extended",
           "frontalface_alt", "frontalface_alt2", "frontalface_alt_tree", "frontalface_default",
           "fullbody", "lefteye_2splits", "license_plate_rus_16stages", "lowerbody",
           "profileface", "righteye_2splits", "russian_plate_number", "smile", "upperbody"]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return astronaut()


def _opencv_xyxy(image: np.ndarray, name: str, scale_factor: float = 1.1,
                 min_neighbors: int = 5, min_size: tuple[int, int] = (30, 30)) -> np.ndarray:
    """OpenCV's own boxes, xyxy, sorted by row (its order depends on its threads)."""
    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + f"haarcascade_{name}.xml")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    xywh = np.asarray(classifier.detectMultiScale(gray, scale_factor, min_neighbors, 0,
                                                  min_size), np.float32).reshape(-1, 4)
    return _sorted(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))


def _sorted(xyxy: np.ndarray) -> np.ndarray:
    xyxy = np.asarray(xyxy, np.float32).reshape(-1, 4)
    return xyxy[np.lexsort(xyxy.T[::-1])]


def test_frontal_face_found_on_the_astronaut(photo: np.ndarray) -> None:
    det = HaarCascade("frontalface_default").candidates([photo], 0.0)[0]
    assert len(det) == 1
    assert det.xyxy.dtype == np.float32 and det.labels.dtype == np.int64
    assert det.scores.dtype == np.float32 and det.labels.tolist() == [0]
    assert float(box_iou(det.xyxy, REFERENCE_FACE)[0, 0]) >= 0.5
    assert 0.0 < float(det.scores[0]) <= 1.0


@pytest.mark.parametrize(("name", "settings"), [
    ("frontalface_default", {}),
    ("frontalface_default", {"scale_factor": 1.05, "min_neighbors": 3}),
    ("frontalface_alt2", {"min_size": (60, 60)}),
    ("eye", {}),
    ("smile", {"min_neighbors": 10}),  # many boxes: the whole set must agree
])
def test_boxes_equal_what_opencv_returns_directly(photo: np.ndarray, name: str,
                                                  settings: dict) -> None:
    det = HaarCascade(name, **settings).candidates([photo], 0.0)[0]
    expected = _opencv_xyxy(photo, name, **settings)
    assert len(expected) >= 1
    np.testing.assert_array_equal(_sorted(det.xyxy), expected)


def test_scores_are_the_grouped_hit_counts_squashed(photo: np.ndarray) -> None:
    det = HaarCascade("smile").candidates([photo], 0.0)[0]
    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_smile.xml")
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    boxes, hits = classifier.detectMultiScale2(gray, 1.1, 5, 0, (30, 30))
    expected = {tuple(b): n / (n + 10) for b, n in zip(np.asarray(boxes).tolist(),
                                                      np.asarray(hits).tolist(), strict=True)}
    got = {(int(x1), int(y1), int(x2 - x1), int(y2 - y1)): float(s)
           for (x1, y1, x2, y2), s in zip(det.xyxy, det.scores, strict=True)}
    assert got.keys() == expected.keys()
    for key, score in got.items():
        assert score == pytest.approx(expected[key], rel=1e-6)
    assert np.all(np.diff(det.scores) <= 0)  # best first


def test_neighbour_score_is_monotonic_in_0_1() -> None:
    s = neighbour_score(np.arange(1, 2000))
    assert s.dtype == np.float32 and np.all(s > 0) and np.all(s < 1)
    assert np.all(np.diff(s) > 0)


def test_score_threshold_drops_low_scores(photo: np.ndarray) -> None:
    smile = HaarCascade("smile")
    every = smile.candidates([photo], 0.0)[0]
    high = smile.candidates([photo], 0.7)[0]
    assert 0 < len(high) < len(every)
    assert np.all(high.scores >= 0.7)


def test_predictor_gives_the_same_boxes_in_image_pixels(photo: np.ndarray,
                                                        tmp_path: Path) -> None:
    p = Predictor("haar:frontalface_default", device="cpu", score_threshold=0)
    assert p.class_names == ["face"] and p.transform is None and p.model is None
    assert p.device.type == "cpu" and "haar:frontalface_default" in repr(p)
    det = p.predict(photo)
    np.testing.assert_array_equal(_sorted(det.xyxy), _opencv_xyxy(photo, "frontalface_default"))
    path = tmp_path / "astronaut.png"
    Image.fromarray(photo).save(path)
    from_file = p.predict(path)
    np.testing.assert_array_equal(from_file.xyxy, det.xyxy)
    np.testing.assert_array_equal(from_file.scores, det.scores)


def test_predictor_routes_the_settings(photo: np.ndarray) -> None:
    p = Predictor("haar:frontalface_default", device="cpu", score_threshold=0,
                  scale_factor=1.05, min_neighbors=3, min_size=(40, 40), max_size=(300, 300))
    b = p.backend
    assert (b.scale_factor, b.min_neighbors, b.min_size, b.max_size) == (1.05, 3, (40, 40),
                                                                         (300, 300))
    np.testing.assert_array_equal(
        _sorted(p.predict(photo).xyxy),
        _opencv_xyxy(photo, "frontalface_default", 1.05, 3, (40, 40)))


def test_min_size_above_the_face_finds_nothing(photo: np.ndarray) -> None:
    det = HaarCascade("frontalface_default", min_size=(200, 200)).candidates([photo], 0.0)[0]
    assert len(det) == 0 and det.xyxy.shape == (0, 4) and det.scores.shape == (0,)


def test_max_size_bounds_the_boxes(photo: np.ndarray) -> None:
    det = HaarCascade("smile", max_size=60).candidates([photo], 0.0)[0]
    assert len(det) and np.all(det.xyxy[:, 2:] - det.xyxy[:, :2] <= 60)


def test_gray_and_rgba_inputs_through_the_predictor(photo: np.ndarray) -> None:
    p = Predictor("haar:frontalface_default", device="cpu", score_threshold=0)
    rgb = p.predict(photo)
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    assert to_rgb_array(gray).shape == photo.shape
    rgba = np.dstack([photo, np.full(photo.shape[:2], 7, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(gray).save(buf, "PNG")
    for image in (gray, rgba, Image.fromarray(rgba), buf.getvalue()):
        det = p.predict(image)
        np.testing.assert_array_equal(det.xyxy, rgb.xyxy)


def test_candidates_take_gray_and_rgba_arrays(photo: np.ndarray) -> None:
    face = HaarCascade("frontalface_default")
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])
    dets = face.candidates([photo, gray, rgba, np.zeros((20, 20, 3), np.uint8)], 0.0)
    assert [len(d) for d in dets] == [1, 1, 1, 0]
    np.testing.assert_array_equal(dets[1].xyxy, dets[0].xyxy)
    np.testing.assert_array_equal(dets[2].xyxy, dets[0].xyxy)
    with pytest.raises(DatasetError, match="uint8"):
        face.candidates([photo.astype(np.float32)], 0.0)


def test_available_cascades_and_class_names() -> None:
    names = available_cascades()
    assert set(SHIPPED) <= set(names)
    classes = {n: cascade_class_name(n) for n in SHIPPED}
    assert {n for n, c in classes.items() if c == "face"} == {
        "frontalface_alt", "frontalface_alt2", "frontalface_alt_tree", "frontalface_default",
        "profileface"}
    assert classes["eye_tree_eyeglasses"] == classes["lefteye_2splits"] == "eye"
    assert classes["fullbody"] == "person" and classes["smile"] == "smile"
    assert classes["frontalcatface_extended"] == "cat face"
    assert classes["russian_plate_number"] == classes["license_plate_rus_16stages"] \
        == "licence plate"
    assert (classes["upperbody"], classes["lowerbody"]) == ("upper body", "lower body")
    for n in SHIPPED:  # every shipped cascade loads
        assert HaarCascade(n).name == f"haar:{n}"


def test_unknown_cascade_is_a_model_error_listing_the_names() -> None:
    with pytest.raises(ModelError, match="unknown Haar cascade") as e:
        HaarCascade("frontalface_typo")
    assert "frontalface_default" in e.value.message and "haar:/path" in e.value.hint
    with pytest.raises(ModelError, match="nope"):
        Predictor("haar:nope", device="cpu")


def test_custom_cascade_file(photo: np.ndarray, tmp_path: Path) -> None:
    own = tmp_path / "my_face.xml"
    shutil.copy(cascade_path("frontalface_default"), own)
    custom = HaarCascade(str(own))
    assert custom.class_names == ["my face"] and custom.name == f"haar:{own}"
    assert HaarCascade(str(own), class_name="face").class_names == ["face"]
    p = Predictor(f"haar:{own}", device="cpu", score_threshold=0)
    np.testing.assert_array_equal(p.predict(photo).xyxy,
                                  HaarCascade("frontalface_default").candidates([photo], 0)[0]
                                  .xyxy)
    assert cascade_path("haarcascade_eye.xml") == cascade_path("eye")


def test_unreadable_cascade_files_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such cascade file"):
        HaarCascade(str(tmp_path / "missing.xml"))
    text = tmp_path / "notes.xml"
    text.write_text("this is not a cascade\n")
    with pytest.raises(ModelError, match="notes.xml"):
        HaarCascade(str(text))
    empty = tmp_path / "empty.xml"
    empty.write_text('<?xml version="1.0"?>\n<opencv_storage>\n</opencv_storage>\n')
    with pytest.raises(ModelError, match="empty.xml"):
        HaarCascade(str(empty))


@pytest.mark.parametrize("settings", [{"scale_factor": 1.0}, {"min_neighbors": -1},
                                      {"min_size": (-1, 5)}, {"max_size": "big"}])
def test_bad_settings_are_config_errors(settings: dict) -> None:
    with pytest.raises(ConfigError):
        HaarCascade("frontalface_default", **settings)


def test_evaluate_on_haar_predictions(photo: np.ndarray) -> None:
    """The astronaut's face as ground truth, and two photographs without faces (coins gives
    the cascade six false hits, each scoring below the face, so AP stays 1)."""
    samples = [Sample(photo, 512, 512, Detections(REFERENCE_FACE, [0]), id="astronaut"),
               Sample(coins(), 384, 303, Detections.empty(), id="coins"),
               Sample(coffee(), 600, 400, Detections.empty(), id="coffee")]
    gt = Dataset(samples, ["face"])
    p = Predictor("haar:frontalface_default", device="cpu", score_threshold=0)
    preds = p.predict_dataset(gt)
    assert [len(d) for d in preds] == [1, 6, 0]
    assert float(preds[0].scores.min()) > float(preds[1].scores.max())
    assert evaluate(gt, preds, protocol="voc12").mAP == pytest.approx(1.0)
    iou = float(box_iou(preds[0].xyxy, REFERENCE_FACE)[0, 0])  # 0.68: TP up to IoU 0.65
    assert 0.65 < iou < 0.7
    assert evaluate(gt, preds, protocol="coco").AP == pytest.approx(0.4)
