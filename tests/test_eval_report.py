"""Reports: the confusion matrix (hand-checked cases), PR-curve and confusion PNGs, the HTML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from danlu import evaluate
from danlu.evaluate.confusion import confusion_matrix
from danlu.evaluate.report import mean_curve, plot_pr_curves, write_report
from danlu.structures import Dataset, Detections, Sample


def small_case() -> tuple[Dataset, list[Detections]]:
    rng = np.random.default_rng(0)
    samples, preds = [], []
    for i in range(6):
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, 60, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 30, (n, 2))], 1)
        labels = rng.integers(0, 2, n)
        samples.append(Sample(np.full((96, 96, 3), 90, np.uint8), 96, 96,
                              Detections(boxes, labels), id=f"img{i}"))
        keep = rng.random(n) < 0.7
        extra = rng.integers(0, 3)
        fb = np.concatenate([rng.uniform(0, 60, (extra, 2))] * 2, 1) + [0, 0, 20, 20]
        preds.append(Detections(np.concatenate([boxes[keep] + 1, fb]),
                                np.concatenate([labels[keep], rng.integers(0, 2, extra)]),
                                scores=rng.uniform(0.3, 1, keep.sum() + extra)))
    return Dataset(samples, ["cat", "dog", "bird"]), preds  # "bird" has no ground truth


def test_confusion_matrix_counts() -> None:
    gt = Dataset([Sample(None, 100, 100, Detections(
        [[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60], [70, 70, 80, 80]], [0, 1, 1, 0],
        flags={"ignore": [False, False, False, True]}), id=0)], ["a", "b"])
    pred = [Detections([[0, 0, 10, 10], [20, 20, 30, 31], [0, 0, 10, 11], [90, 90, 99, 99],
                        [70, 70, 80, 80], [50, 50, 60, 60]], [0, 0, 0, 1, 0, 1],
                       scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.1])]
    cm = confusion_matrix(gt, pred, iou=0.5, score=0.25)
    # a->a 1, b->a 1 (mislabel), b missed (the 0.1 box is below the score), duplicate a and
    # the far box are false alarms; the ignored box and its match are not counted.
    assert cm.matrix.tolist() == [[1, 0, 0], [1, 0, 1], [1, 1, 0]]
    assert cm.false_positives.tolist() == [3] and cm.false_negatives.tolist() == [2]
    assert cm.labels == ["a", "b", "background"]
    cm = confusion_matrix(gt, pred, iou=0.5, score=0.0)
    assert cm.matrix[1, 1] == 1 and cm.matrix[1, 2] == 0


@pytest.mark.parametrize("protocol", ["coco", "voc07", "dota"])
def test_write_report(tmp_path: Path, protocol: str) -> None:
    gt, preds = small_case()
    result = evaluate(gt, preds, protocol=protocol)
    html_path = write_report(result, gt, preds, tmp_path / "rep", gallery=3)
    html = html_path.read_text()
    for name in ("cat", "dog", "bird", "Per-class AP", "Confusion matrix",
                 "Images with the most errors", "data:image/png;base64,"):
        assert name in html
    assert "src='gallery" not in html and 'src="pr_' not in html  # self-contained
    for png in ("pr_curves.png", "confusion_matrix.png"):
        with Image.open(tmp_path / "rep" / png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
    tiles = sorted((tmp_path / "rep" / "gallery").glob("*.png"))
    assert 1 <= len(tiles) <= 6
    with Image.open(tiles[0]) as im:
        assert im.size[0] > 2 * 96  # ground truth and predictions side by side


def test_mean_curve_and_plot_without_ground_truth(tmp_path: Path) -> None:
    gt = Dataset([Sample(None, 50, 50, Detections.empty(), id=0)], ["a"])
    r = evaluate(gt, [Detections([[0, 0, 5, 5]], [0], scores=[0.5])], protocol="voc12")
    grid, p = mean_curve(r)
    assert grid.shape == p.shape == (101,) and not p.any()
    assert plot_pr_curves(r, tmp_path / "pr.png").stat().st_size > 0


def test_mean_curve_perfect_detector() -> None:
    gt, _ = small_case()
    preds = [s.detections.with_scores(np.ones(len(s.detections))) for s in gt]
    grid, p = mean_curve(evaluate(gt, preds, protocol="voc12"))
    assert np.allclose(p, 1.0)
