"""Synthetic datasets: determinism, box validity, overlap control, presets."""

from __future__ import annotations

import hashlib
import importlib.util
import io

import numpy as np
import pytest
from PIL import Image

from danlu.data.synth import SHAPE_CLASSES, _tight_box, synthesize, synthesize_image
from danlu.errors import ConfigError

SMALL = dict(image_size=(64, 48), scale_range=(10, 20), objects_per_image=(1, 4))


def _digest(ds) -> str:
    h = hashlib.sha256()
    for s in ds:
        h.update(s.image)
        h.update(s.detections.xyxy.tobytes())
        h.update(s.detections.labels.tobytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs():
    a = synthesize("shapes", 4, seed=3, **SMALL)
    b = synthesize("shapes", 4, seed=3, **SMALL)
    c = synthesize("shapes", 4, seed=4, **SMALL)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_prefix_stable_and_png_decodes_to_array():
    short = synthesize("shapes", 2, seed=1, **SMALL)
    long = synthesize("shapes", 4, seed=1, encode=False, **SMALL)
    for s, t in zip(short, long[:2], strict=True):
        assert np.array_equal(s.load_image(), t.image)
        assert s.detections.allclose(t.detections)
    with Image.open(io.BytesIO(short[0].image)) as im:
        assert im.format == "PNG" and im.size == (64, 48)


@pytest.mark.skipif(importlib.util.find_spec("danlu.data.io") is None,
                    reason="danlu.data.io not available yet")
def test_written_files_are_identical_for_the_same_seed(tmp_path):
    from danlu.data.io import save_dataset

    def written(root):
        save_dataset(synthesize("shapes", 3, seed=9, **SMALL), root, "voc")
        return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    first, second = written(tmp_path / "a"), written(tmp_path / "b")
    assert first == second and len(first) >= 6


def test_boxes_inside_image_counts_and_no_overlap():
    ds = synthesize("shapes", 20, seed=0, image_size=(96, 80), scale_range=(12, 30),
                    objects_per_image=(2, 5), encode=False)
    assert ds.class_names == SHAPE_CLASSES
    for s in ds:
        d = s.detections
        assert 1 <= len(d) <= 5
        assert (d.xyxy[:, :2] >= 0).all() and (d.xyxy[:, 2] <= 96).all()
        assert (d.xyxy[:, 3] <= 80).all()
        wh = d.xyxy[:, 2:] - d.xyxy[:, :2]
        assert (wh >= 3).all() and (wh <= 30 * np.sqrt(2) + 2).all()
        assert set(d.labels.tolist()) <= set(range(4))
        b = d.xyxy.astype(np.float64)
        for i in range(len(b)):
            for j in range(i + 1, len(b)):
                iw = min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0])
                ih = min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1])
                assert iw <= 0 or ih <= 0, "boxes overlap with max_overlap=0"


def test_max_overlap_allows_overlap():
    ds = synthesize("shapes", 30, seed=2, image_size=(64, 64), scale_range=(28, 40),
                    objects_per_image=(6, 6), max_overlap=0.9, encode=False)
    assert max(len(s.detections) for s in ds) == 6


def test_box_is_tight_box_of_object_pixels():
    # rotation 0 and an unrotated square: the box must cover exactly the object's pixels
    img, det = synthesize_image("shapes", seed=5, index=0, image_size=(64, 64),
                                scale_range=(20, 20), objects_per_image=(1, 1), rotation=0,
                                color_jitter=0)
    assert len(det) == 1
    x1, y1, x2, y2 = det.xyxy[0].astype(int)
    if SHAPE_CLASSES[det.labels[0]] in ("square", "circle"):
        assert (x2 - x1, y2 - y1) == (20, 20)
    alpha = np.zeros((6, 7), np.float32)
    alpha[2:4, 1:5] = 0.9
    alpha[1, 3] = 0.4  # below one half: not part of the mask
    assert _tight_box(alpha) == (1, 2, 5, 4)
    assert _tight_box(np.zeros((3, 3), np.float32)) is None


def test_bad_arguments():
    with pytest.raises(ConfigError):
        synthesize("clouds", 1)
    with pytest.raises(ConfigError):
        synthesize("shapes", 1, image_size=(32, 32), scale_range=(10, 40))


def test_digits_preset():
    if importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("skimage") is None:
        pytest.skip("the digits preset needs scikit-learn and scikit-image")
    ds = synthesize("digits", 3, seed=0, image_size=(64, 64), scale_range=(16, 24))
    assert ds.class_names == [str(i) for i in range(10)]
    assert all(1 <= len(s.detections) <= 6 for s in ds)
    assert _digest(ds) == _digest(synthesize("digits", 3, seed=0, image_size=(64, 64),
                                             scale_range=(16, 24)))


@pytest.mark.skipif(importlib.util.find_spec("danlu.data.io") is None,
                    reason="danlu.data.io not available yet")
def test_data_prep_commands_end_to_end(tmp_path):
    import typer
    from typer.testing import CliRunner

    from danlu.cli.data_prep import register
    from danlu.data.io import load_dataset
    from danlu.data.pack import PackedDataset

    app = typer.Typer()
    register(app)
    runner = CliRunner()

    def ok(*args):
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 0, (args, r.output, r.exception)
        return r

    src = tmp_path / "shapes"
    ok("synth", "--preset", "shapes", "--num-images", 6, "--seed", 0, "--to", "voc",
       "--out", src, "--image-size", "64x48", "--scale", "10,20")
    ds = load_dataset(src)
    assert len(ds) == 6 and ds.class_names == SHAPE_CLASSES
    ok("show", src, "--out", tmp_path / "show", "--limit", 2)
    assert len(list((tmp_path / "show").glob("*.png"))) == 2
    r = ok("split", src, "--ratios", "0.5,0.5", "--out", tmp_path / "split", "--json")
    assert '"train": 3' in r.stdout
    assert len(load_dataset(tmp_path / "split" / "val")) == 3
    ok("tile", src, "--tile-size", 32, "--gap", 8, "--out", tmp_path / "tiles")
    assert len(load_dataset(tmp_path / "tiles")) == 6 * 6
    ok("crop", src, "--out", tmp_path / "crops")
    assert len(list((tmp_path / "crops" / "backgrounds").glob("*.png"))) == 6
    ok("drop-labels", src, "--rate", 1, "--out", tmp_path / "drop")
    assert load_dataset(tmp_path / "drop").num_boxes == 0
    assert (tmp_path / "drop" / "dropped.json").is_file()
    ok("filter-small", src, "--min-area", 0, "--out", tmp_path / "small", "--to", "coco")
    assert load_dataset(tmp_path / "small").num_boxes == ds.num_boxes
    ok("whitebalance", src, "--out", tmp_path / "wb")
    assert len(load_dataset(tmp_path / "wb")) == 6
    ok("pack", src, "--img-size", 32, "--out", tmp_path / "p.pack")
    assert len(PackedDataset(tmp_path / "p.pack")) == 6
    for cmd in ("synth", "show", "split", "tile", "crop", "drop-labels", "filter-small",
                "whitebalance", "pack"):
        assert "Example: danlu data" in " ".join(ok(cmd, "--help").output.split())
    bad = runner.invoke(app, ["synth", "--preset", "nope", "--out", str(tmp_path / "x")])
    assert isinstance(bad.exception, ConfigError)
