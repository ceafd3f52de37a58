"""``danlu eval`` end to end: a COCO dataset on disk, COCO results JSON, --json and --report."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import orjson
import pytest

from danlu.cli.main import main
from danlu.data.io import load_dataset, load_predictions, save_dataset, save_predictions
from danlu.data.synth import synthesize
from danlu.evaluate import evaluate
from danlu.structures import Dataset, Detections, Sample


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("eval")
    ds = synthesize("shapes", num_images=6, seed=0, image_size=(96, 96),
                    objects_per_image=(1, 4), scale_range=(16, 40))
    gt_path = save_dataset(ds, tmp / "coco", "coco")
    rng = np.random.default_rng(0)
    samples = []
    for s in ds:
        d = s.detections
        boxes = d.xyxy + rng.normal(0, 2, d.xyxy.shape)
        extra = np.array([[5, 5, 30, 30]], np.float32)
        samples.append(Sample(s.image, s.width, s.height, Detections(
            np.concatenate([boxes, extra]), np.concatenate([d.labels, [1]]),
            scores=rng.random(len(d) + 1)), id=s.id))
    pred_path = save_predictions(Dataset(samples, ds.class_names), tmp / "preds.json")
    return Path(gt_path), pred_path


def _run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def test_eval_json_matches_library(files: tuple[Path, Path]) -> None:
    gt_path, pred_path = files
    code, out = _run("eval", "--gt", str(gt_path), "--pred", str(pred_path), "--json")
    assert code == 0
    doc = orjson.loads(out)  # exactly one JSON document
    assert len(doc["stats"]) == 12 and doc["protocol"] == "coco"
    gt = load_dataset(gt_path)
    expected = evaluate(gt, load_predictions(pred_path, gt))
    assert doc["stats"] == pytest.approx(expected.stats.tolist(), abs=1e-12)
    assert doc["AP"] == doc["stats"][0] and doc["ARl"] == doc["stats"][11]
    assert set(doc["per_class"]) == set(gt.class_names)


@pytest.mark.parametrize("protocol", ["voc07", "voc12", "dota", "dota-hbb"])
def test_eval_other_protocols(files: tuple[Path, Path], protocol: str) -> None:
    gt_path, pred_path = files
    code, out = _run("eval", "--gt", str(gt_path), "--pred", str(pred_path), "--protocol",
                     protocol, "--iou", "0.5", "--json")
    assert code == 0
    doc = orjson.loads(out)
    assert doc["protocol"] == protocol and 0 <= doc["mAP"] <= 1


def test_eval_tables_and_report(files: tuple[Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    gt_path, pred_path = files
    code = main(["eval", "--gt", str(gt_path), "--pred", str(pred_path), "--protocol", "voc12",
                 "--report", str(tmp_path / "rep")])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out == ""  # tables go to stderr
    assert "per-class AP" in captured.err and "mAP" in captured.err
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "Per-class AP" in html and "data:image/png;base64," in html
    for name in ("pr_curves.png", "confusion_matrix.png", "metrics.json"):
        assert (tmp_path / "rep" / name).stat().st_size > 0


def test_eval_bad_input(files: tuple[Path, Path], tmp_path: Path) -> None:
    gt_path, pred_path = files
    code, _ = _run("eval", "--gt", str(gt_path), "--pred", str(pred_path), "--protocol", "x")
    assert code == 2
    code, _ = _run("eval", "--gt", str(tmp_path / "missing"), "--pred", str(pred_path))
    assert code == 2
    code, _ = _run("eval", "--gt", str(gt_path), "--pred", str(pred_path), "--max-dets", "1,x")
    assert code == 2
