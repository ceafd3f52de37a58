"""Issue 11, through the real console script: the evaluation report writes its parameters as a
person would (no ``0.8999999999999999``, no ``10000000000.0``), says each error count once and
lists each image once; ``danlu data show`` draws 50 images unless told otherwise, says how many
of how many, and its legend names only the classes it drew."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from tests._cli import danlu

from danlu.data.io import load_dataset, save_predictions
from danlu.evaluate.page import area_range_text, param_text, short_number
from danlu.structures import Dataset, Detections, Sample

# float noise as repr() prints it: 0.8999999999999999, 0.30000000000000004, 10000000000.0
NOISE = re.compile(r"\d\.\d*(?:99999|00000)\d*|\d{8,}(?:\.0)?|\de\+?10\b")




def visible(html: str) -> str:
    """The page without its embedded pictures (base64 can hold any digits)."""
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "DATA", html)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-image COCO dataset made by ``danlu data synth`` and predictions in which image 0
    has both the most false positives and the most false negatives (every box moved away)."""
    root = tmp_path_factory.mktemp("report")
    r = danlu("data", "synth", "--preset", "shapes", "--num-images", "12", "--image-size", "96",
              "--scale", "16,40", "--objects", "2,4", "--seed", "0", "--to", "coco",
              "--out", "gt", cwd=root)
    assert r.returncode == 0, r.stderr
    gt = load_dataset(root / "gt")
    rng = np.random.default_rng(0)
    samples = []
    for i, s in enumerate(gt):
        d = s.detections
        boxes = d.xyxy + rng.normal(0, 1, d.xyxy.shape)
        labels = d.labels
        if i == 0:  # every box far off: all its boxes are misses, all its predictions alarms
            boxes = np.concatenate([boxes, boxes]) * 0.1 + 60
            labels = np.concatenate([labels, labels])
        elif i % 3 == 1:  # one miss
            boxes, labels = boxes[1:], labels[1:]
        elif i % 3 == 2:  # one false alarm
            boxes = np.concatenate([boxes, [[2, 2, 14, 14]]])
            labels = np.concatenate([labels, [0]])
        samples.append(Sample(s.image, s.width, s.height, Detections(
            boxes, labels, scores=rng.uniform(0.5, 1, len(labels))), id=s.id))
    save_predictions(Dataset(samples, gt.class_names), root / "preds.json")
    return root


@pytest.mark.parametrize("protocol", ["coco", "voc07"])
def test_report_parameters_wording_and_images_once(evaluated: Path, protocol: str) -> None:
    r = danlu("eval", "--gt", "gt", "--pred", "preds.json", "--protocol", protocol,
              "--report", f"rep_{protocol}", cwd=evaluated)
    assert r.returncode == 0, r.stderr
    html = visible((evaluated / f"rep_{protocol}" / "report.html").read_text(encoding="utf-8"))
    assert not NOISE.findall(html), NOISE.findall(html)
    if protocol == "coco":
        assert "0.85, 0.9, 0.95" in html and "no upper limit" in html and "any size" in html
    tiles = re.findall(r"<div class='tile'><p>(.*?)</p>", html)
    assert tiles
    for caption in tiles:
        assert len(re.findall(r"\d+ false positives?\b", caption)) == 1, caption
        assert len(re.findall(r"\d+ false negatives?\b", caption)) == 1, caption
        assert "false positives:" not in caption and "false negatives:" not in caption
        assert not re.search(r"\b1 false (positive|negative)s", caption), caption
    ids = [re.match(r"<b>(.*?)</b>", c).group(1) for c in tiles]
    assert len(ids) == len(set(ids)), ids
    first = next(c for c in tiles if c.startswith(f"<b>{ids[0]}</b>"))
    assert "the most false positives and the most false negatives" in first
    pngs = sorted(p.name for p in (evaluated / f"rep_{protocol}" / "gallery").glob("*.png"))
    assert len(pngs) == len(tiles) and pngs[0] == "00_fp_fn.png"


def test_training_run_report_has_no_float_noise(evaluated: Path) -> None:
    from danlu.train.report import write_evaluation

    gt = load_dataset(evaluated / "gt")
    preds = [s.detections.with_scores(np.full(len(s.detections), 0.9)) for s in gt]
    write_evaluation("unused.pt", gt, evaluated / "run_eval", predictions=preds)
    html = visible((evaluated / "run_eval" / "report.html").read_text(encoding="utf-8"))
    assert "iou_thresholds" in html and not NOISE.findall(html), NOISE.findall(html)


def test_parameter_formatter() -> None:
    assert [short_number(v) for v in (0.1 + 0.2, 0.8999999999999999, 1e10, 9216.0, 0.0)] == \
        ["0.3", "0.9", "1e+10", "9216", "0"]
    assert short_number(float("inf")) == "∞" and short_number(np.float32(0.05)) == "0.05"
    assert area_range_text([0.0, 1e10]) == "any size"
    assert param_text(np.linspace(0.5, 0.95, 10)) == \
        "0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95"
    assert param_text({"a": [1, 2], "b": True}) == "a: 1, 2; b: true"


@pytest.fixture(scope="module")
def shapes55(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("show")
    r = danlu("data", "synth", "--preset", "shapes", "--num-images", "55", "--image-size", "48",
              "--scale", "10,20", "--seed", "0", "--to", "voc", "--out", "d", cwd=root)
    assert r.returncode == 0, r.stderr
    return root


def embedded(page: Path) -> int:
    return len(re.findall(r'src="data:image/png;base64,', page.read_text(encoding="utf-8")))


def test_data_show_has_a_default_limit_and_says_so(shapes55: Path) -> None:
    r = danlu("data", "show", "d", "--out", "s", cwd=shapes55)
    assert r.returncode == 0, r.stderr
    assert len(list((shapes55 / "s").glob("*.png"))) == 50 == embedded(shapes55 / "s/index.html")
    assert "showed 50 of 55 images" in r.stderr and "--all" in r.stderr
    assert "50 of 55 images" in (shapes55 / "s" / "index.html").read_text(encoding="utf-8")
    r = danlu("data", "show", "d", "--out", "all", "--all", cwd=shapes55)
    assert r.returncode == 0 and "showed 55 of 55 images" in r.stderr
    assert embedded(shapes55 / "all" / "index.html") == 55
    r = danlu("data", "show", "d", "--out", "neg", "--limit", "-1", cwd=shapes55)
    assert r.returncode == 2 and "limit" in r.stderr and "Traceback" not in r.stderr


def legend_names(page: Path) -> list[str]:
    legend = re.search(r"<p class='legend'>(.*?)</p>", page.read_text(encoding="utf-8"))
    return [re.sub(r" \d+$", "", n) for n in re.findall(r"<span[^>]*>(.*?)</span>",
                                                        legend.group(1))]


def test_data_show_legend_lists_only_the_classes_drawn(shapes55: Path) -> None:
    r = danlu("data", "show", "d", "--out", "stars", "--limit", "4", "--classes", "star",
              cwd=shapes55)
    assert r.returncode == 0, r.stderr
    assert legend_names(shapes55 / "stars" / "index.html") == ["star"]
    assert "showed 4 of" in r.stderr and "images with star" in r.stderr

    from danlu.data.show import show_dataset

    ds = load_dataset(shapes55 / "d")
    first = {ds.class_names[k] for k in ds.samples[0].detections.labels.tolist()}
    page = show_dataset(ds, shapes55 / "one", limit=1)
    assert set(legend_names(page)) == first and len(first) < len(ds.class_names)
