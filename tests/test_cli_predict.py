"""`danlu predict` as a user runs it: folders with bad files, globs, video, formats read back,
sliced huge TIFFs with GeoJSON, per-class thresholds, TTA."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import orjson
import pytest
from PIL import Image

from _data_fixtures import train_tiny_checkpoint
from danlu.cli.main import main
from danlu.data.io import load_predictions
from danlu.data.synth import synthesize
from danlu.infer.predictor import Predictor
from danlu.structures import Dataset, Sample


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("cli-predict"))


def _images(folder, n=3, size=(80, 60), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    ds = synthesize("shapes", num_images=n, seed=seed, image_size=size, scale_range=(12, 28),
                    encode=False)
    paths = []
    for i, s in enumerate(ds.samples):
        p = folder / f"img{i}.png"
        Image.fromarray(s.load_image()).save(p)
        paths.append(p)
    return paths


def _run(args, capsys=None):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["--quiet", *args])
    return code, buf.getvalue()


def test_a_bad_file_in_a_folder_is_skipped_and_counted(ckpt, tmp_path, capsys):
    folder = tmp_path / "imgs"
    paths = _images(folder)
    good = paths[0].read_bytes()
    (folder / "cut.png").write_bytes(good[: len(good) // 2])  # truncated
    (folder / "notes.jpg").write_text("not an image")
    code, out = _run(["predict", str(ckpt), str(folder), "--out", str(tmp_path / "p"),
                      "--score-threshold", "0.01", "--json"])
    assert code == 0
    doc = orjson.loads(out)
    assert doc["summary"]["images"] == 3 and doc["summary"]["failed"] == 2
    assert sorted(f["path"].rsplit("/", 1)[1] for f in doc["failed"]) == ["cut.png", "notes.jpg"]
    err = capsys.readouterr().err
    assert "skipped" in err and "cut.png" in err
    assert doc == orjson.loads((tmp_path / "p" / "predictions.json").read_bytes())
    # --strict stops at the first bad file with exit 2
    code, _ = _run(["predict", str(ckpt), str(folder), "--out", str(tmp_path / "q"), "--strict"])
    assert code == 2


def test_globs_and_typos_fail_before_the_model_loads(ckpt, tmp_path, capsys):
    _images(tmp_path / "a" / "deep", n=2)
    code, out = _run(["predict", str(ckpt), str(tmp_path / "a" / "**" / "*.png"), "--out",
                      str(tmp_path / "p"), "--score-threshold", "0.01", "--json"])
    assert code == 0 and len(orjson.loads(out)["images"]) == 2
    assert _run(["predict", str(ckpt), str(tmp_path / "nope" / "*.png"), "--out",
                 str(tmp_path / "p")])[0] == 2
    assert _run(["predict", str(ckpt), str(tmp_path / "a"), "--out", str(tmp_path / "p")])[0] == 2
    assert "--recursive" in capsys.readouterr().err
    code, out = _run(["predict", str(ckpt), str(tmp_path / "a"), "-r", "--out",
                      str(tmp_path / "p"), "--json", "--score-threshold", "0.01"])
    assert code == 0 and len(orjson.loads(out)["images"]) == 2


def test_every_format_is_read_back_by_load_predictions(ckpt, tmp_path, capsys):
    paths = _images(tmp_path / "imgs", n=3, size=(90, 70), seed=4)
    code, out = _run(["predict", str(ckpt), str(tmp_path / "imgs"), "--out", str(tmp_path / "p"),
                      "--score-threshold", "0.05", "--to", "coco,voc", "--to", "yolo",
                      "--to", "dota", "--to", "dota-task1,dota-task2", "--json"])
    assert code == 0
    doc = orjson.loads(out)
    # VOC and DOTA label files hold no scores: said, with the count
    n = sum(len(r["detections"]["labels"]) for r in doc["images"])
    err = capsys.readouterr().err
    for fmt in ("voc", "dota"):
        assert f"warning: --to {fmt}: {fmt.upper()} holds no scores: {n} scores dropped" in err
    assert "--to coco:" not in err and "--to yolo:" not in err
    gt = Dataset([Sample(p, 90, 70, id=p.stem) for p in paths],
                 ["circle", "square", "triangle", "star"])
    want = {r["path"].rsplit("/", 1)[1].split(".")[0]: r["detections"] for r in doc["images"]}
    assert sum(len(d["labels"]) for d in want.values()) > 0
    root = tmp_path / "p"
    for fmt, path in [("coco", root / "predictions.coco.json"), ("voc", root / "voc"),
                      ("yolo", root / "yolo"), ("dota", root / "dota"),
                      ("danlu", root / "predictions.json")]:
        back = load_predictions(path, gt)
        for s in back.samples:
            d = want[s.id]
            assert len(s.detections) == len(d["labels"]), fmt
            np.testing.assert_allclose(np.sort(s.detections.xyxy, axis=0),
                                       np.sort(np.asarray(d["xyxy"], np.float32).reshape(-1, 4),
                                               axis=0), atol=1.01, err_msg=fmt)  # VOC: ints
    task2 = {f.name: f.read_text().splitlines() for f in (root / "dota-task2").iterdir()}
    assert set(task2) == {f"Task2_{c}.txt" for c in gt.class_names}
    n = sum(len(v) for v in task2.values())
    assert n == sum(len(d["labels"]) for d in want.values())
    line = next(v[0] for v in task2.values() if v).split()
    assert line[0] in want and len(line) == 6
    assert len(next(v[0] for v in (
        f.read_text().splitlines() for f in (root / "dota-task1").iterdir()) if v).split()) == 10


def test_a_video_is_read_frame_by_frame_with_a_stride(ckpt, tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 64))
    frames = synthesize("shapes", num_images=7, seed=9, image_size=(80, 64),
                        scale_range=(12, 28), encode=False)
    for s in frames.samples:
        writer.write(cv2.cvtColor(s.load_image(), cv2.COLOR_RGB2BGR))
    writer.release()
    code, out = _run(["predict", str(ckpt), str(path), "--out", str(tmp_path / "p"),
                      "--vid-stride", "3", "--score-threshold", "0.01", "--json"])
    assert code == 0
    doc = orjson.loads(out)
    assert [r["frame"] for r in doc["images"]] == [0, 3, 6]
    assert sorted(p.name for p in (tmp_path / "p" / "images").iterdir()) == [
        "clip_000000.png", "clip_000003.png", "clip_000006.png"]


def test_a_huge_geotiff_is_sliced_by_window_and_written_as_geojson(ckpt, tmp_path):
    tifffile = pytest.importorskip("tifffile")
    scene = synthesize("shapes", num_images=1, seed=5, image_size=(700, 500),
                       scale_range=(14, 28), objects_per_image=(30, 40), encode=False)[0]
    path = tmp_path / "scene.tif"
    extratags = [(33550, "d", 3, (0.5, 0.5, 0.0), False),
                 (33922, "d", 6, (0, 0, 0, 500000.0, 4000000.0, 0.0), False),
                 (34735, "H", 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1,
                                   32633), False)]
    tifffile.imwrite(path, scene.load_image(), tile=(128, 128), compression="zlib",
                     extratags=extratags)
    code, out = _run(["predict", str(ckpt), str(path), "--out", str(tmp_path / "p"),
                      "--slice", "64", "--overlap", "0.25", "--score-threshold", "0.05",
                      "--json"])
    assert code == 0
    doc = orjson.loads(out)
    rec = doc["images"][0]
    assert rec["sliced"] and (rec["width"], rec["height"]) == (700, 500)
    n = len(rec["detections"]["labels"])
    assert n > 0
    gj = orjson.loads((tmp_path / "p" / "geojson" / "scene.geojson").read_bytes())
    assert len(gj["features"]) == n
    x1, y1 = rec["detections"]["xyxy"][0][:2]
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == pytest.approx([500000.0 + 0.5 * x1, 4000000.0 - 0.5 * y1], abs=1e-3)
    # the same boxes as the library call on the array
    from danlu.infer.slicing import sliced_predict

    p = Predictor(ckpt, device="cpu", score_threshold=0.05)
    want = sliced_predict(p, scene.load_image(), slice_size=64, overlap=0.25)
    np.testing.assert_allclose(np.asarray(rec["detections"]["xyxy"]), want.xyxy, atol=1e-3)


def test_per_class_thresholds_and_tta(ckpt, tmp_path):
    paths = _images(tmp_path / "imgs", n=2, size=(96, 96), seed=8)
    (tmp_path / "thr.yaml").write_text("circle: 0.99\nsquare: 0.01\n")
    code, out = _run(["predict", str(ckpt), str(tmp_path / "imgs"), "--out", str(tmp_path / "p"),
                      "--score-threshold", "0.02", "--class-thresholds",
                      str(tmp_path / "thr.yaml"), "--json"])
    assert code == 0
    for rec in orjson.loads(out)["images"]:
        d = rec["detections"]
        for label, score in zip(d["labels"], d["scores"], strict=True):
            assert score >= (0.99 if label == 0 else 0.01 if label == 1 else 0.02)
    (tmp_path / "bad.yaml").write_text("giraffe: 0.5\n")
    assert _run(["predict", str(ckpt), str(paths[0]), "--out", str(tmp_path / "q"),
                 "--class-thresholds", str(tmp_path / "bad.yaml")])[0] == 2
    p = Predictor(ckpt, device="cpu", score_threshold=0.02, tta=True)
    assert len(p.tta) == 4
    det = p.predict(str(paths[0]))
    assert det.scores is not None and (det.scores <= 1.0 + 1e-6).all()
    assert (det.xyxy[:, [0, 2]] <= 96).all() and (det.xyxy[:, [0, 2]] >= 0).all()
