"""DOTA task 1 / task 2 AP against an oracle written from DOTA_devkit's definitions
(dota_evaluation_task1.py / task2.py: a loop over detections, the +1-pixel horizontal pre-filter,
polygon IoU by shapely, ``ovmax > ovthresh``, VOC07 11-point AP), apart from the fast code."""

from __future__ import annotations

import numpy as np
import pytest

from danlu import evaluate
from danlu.evaluate.reference import devkit_dota
from danlu.structures import Dataset, Detections, Sample

shapely = pytest.importorskip("shapely")

CLASSES = ["plane", "ship", "harbor", "never"]


def oracle_dota(gt: Dataset, preds: list[Detections], *, task: int, use_07: bool = True,
                iou: float = 0.5) -> dict[str, float]:
    """DOTA_devkit's loop (danlu.evaluate.reference; polygon IoU by shapely)."""
    return devkit_dota(gt, preds, task=task, use_07=use_07, iou=iou)


def rotated(cx, cy, w, h, a) -> np.ndarray:  # noqa: ANN001
    c, s = np.cos(a)[:, None], np.sin(a)[:, None]
    dx = np.array([-1.0, 1.0, 1.0, -1.0]) * w[:, None] / 2
    dy = np.array([-1.0, -1.0, 1.0, 1.0]) * h[:, None] / 2
    x = cx[:, None] + dx * c - dy * s
    y = cy[:, None] + dx * s + dy * c
    return np.stack([x, y], -1)


def random_case(seed: int) -> tuple[Dataset, list[Detections]]:
    rng = np.random.default_rng(seed)
    samples, preds = [], []
    for i in range(int(rng.integers(1, 8))):
        n = int(rng.integers(0, 7)) if rng.random() > 0.15 else 0
        par = [rng.uniform(20, 280, n), rng.uniform(20, 280, n), rng.uniform(5, 60, n),
               rng.uniform(5, 30, n), rng.uniform(-np.pi, np.pi, n)]
        polys = rotated(*par)
        labels = rng.integers(0, 3, n)
        samples.append(Sample(None, 300, 300, Detections(
            None, labels, polygons=polys, flags={"difficult": rng.random(n) < 0.2}), id=i))
        m = int(rng.integers(0, 12)) if rng.random() > 0.1 else 0
        if n and m:
            src = rng.integers(0, n, m)
            jit = rng.random(m) < 0.7
            q = [p[src] + rng.normal(0, s, m) * jit for p, s in zip(par, [3, 3, 3, 3, 0.2],
                                                                      strict=True)]
            q[2], q[3] = np.abs(q[2]) + 1, np.abs(q[3]) + 1
            lab = np.where(rng.random(m) < 0.85, labels[src], rng.integers(0, 4, m))
        else:
            q = [rng.uniform(20, 280, m), rng.uniform(20, 280, m), rng.uniform(5, 60, m),
                 rng.uniform(5, 30, m), rng.uniform(-np.pi, np.pi, m)]
            lab = rng.integers(0, 4, m)
        preds.append(Detections(None, lab, scores=np.round(rng.random(m), 1),
                                polygons=rotated(*q)))
    return Dataset(samples, CLASSES), preds


def assert_aps_equal(ours: dict[str, float], expected: dict[str, float]) -> None:
    for k in expected:
        if np.isnan(expected[k]):
            assert np.isnan(ours[k]), k
        else:
            assert abs(ours[k] - expected[k]) <= 1e-9, (k, ours[k], expected[k])


@pytest.mark.parametrize("seed", range(30))
def test_dota_task1_matches_devkit_oracle(seed: int) -> None:
    gt, preds = random_case(seed)
    r = evaluate(gt, preds, protocol="dota")
    assert r.protocol == "dota"
    assert_aps_equal(r.per_class, oracle_dota(gt, preds, task=1))


@pytest.mark.parametrize("seed", range(8))
def test_dota_task1_all_point(seed: int) -> None:
    gt, preds = random_case(100 + seed)
    r = evaluate(gt, preds, protocol="dota", eleven_point=False, iou=0.3)
    assert_aps_equal(r.per_class, oracle_dota(gt, preds, task=1, use_07=False, iou=0.3))


@pytest.mark.parametrize("seed", range(20))
def test_dota_task2_matches_devkit_oracle(seed: int) -> None:
    gt, preds = random_case(200 + seed)
    r = evaluate(gt, preds, protocol="dota-hbb")
    assert_aps_equal(r.per_class, oracle_dota(gt, preds, task=2))


def test_strict_threshold_and_difficult() -> None:
    sq = np.array([[[0, 0], [10, 0], [10, 10], [0, 10]]], float)
    tall = np.array([[[0, 0], [10, 0], [10, 20], [0, 20]]], float)  # IoU exactly 0.5 with sq
    gt = Dataset([Sample(None, 50, 50, Detections(None, [0], polygons=sq), id=0)], ["a"])
    pred = [Detections(None, [0], scores=[0.9], polygons=tall)]
    assert evaluate(gt, pred, protocol="dota").mAP == 0.0  # DOTA_devkit: ovmax > 0.5
    assert evaluate(gt, pred, protocol="dota", match=">=").mAP == 1.0  # exactly, not 1 + 2e-16
    gt_d = Dataset([Sample(None, 50, 50, Detections(None, [0], polygons=sq,
                                                    flags={"difficult": [True]}), id=0)], ["a"])
    r = evaluate(gt_d, [Detections(None, [0], scores=[0.9], polygons=sq)], protocol="dota")
    assert np.isnan(r.mAP) and r.num_gt == {"a": 0}


def test_horizontal_predictions_in_task1() -> None:
    gt, _ = random_case(1)
    preds = [Detections(s.detections.xyxy, s.detections.labels,
                        scores=np.ones(len(s.detections))) for s in gt]
    r = evaluate(gt, preds, protocol="dota")
    assert 0.0 <= r.mAP <= 1.0 or np.isnan(r.mAP)
