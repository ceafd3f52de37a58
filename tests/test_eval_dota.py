"""DOTA task 1 / task 2 AP against an oracle written from DOTA_devkit's definitions
(dota_evaluation_task1.py / task2.py: a loop over detections, the +1-pixel horizontal pre-filter,
polygon IoU by shapely, ``ovmax > ovthresh``, VOC07 11-point AP), apart from the fast code."""

from __future__ import annotations

import numpy as np
import pytest

from danlu import evaluate
from danlu.structures import Dataset, Detections, Sample

shapely = pytest.importorskip("shapely")
from shapely.geometry import Polygon  # noqa: E402

CLASSES = ["plane", "ship", "harbor", "never"]


def oracle_ap(rec: np.ndarray, prec: np.ndarray, use_07: bool) -> float:
    if use_07:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):
            p = 0 if np.sum(rec >= t) == 0 else np.max(prec[rec >= t])
            ap = ap + p / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def poly_iou(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = Polygon(a.reshape(4, 2)), Polygon(b.reshape(4, 2))
    inter = pa.intersection(pb).area
    union = pa.area + pb.area - inter
    return inter / union if union > 0 else 0.0


def oracle_dota(gt: Dataset, preds: list[Detections], *, task: int, use_07: bool = True,
                iou: float = 0.5) -> dict[str, float]:
    aps = {}
    for c, name in enumerate(gt.class_names):
        recs, npos = {}, 0
        for i, s in enumerate(gt):
            d = s.detections
            m = d.labels == c
            geom = d.polygons[m].reshape(-1, 8) if task == 1 else d.xyxy[m]
            diff = d.flag("difficult")[m]
            recs[i] = {"bbox": geom.astype(float), "difficult": diff,
                       "det": [False] * int(m.sum())}
            npos += int((~diff).sum())
        image_ids, conf, boxes = [], [], []
        for i, p in enumerate(preds):
            for k in np.flatnonzero(p.labels == c):
                image_ids.append(i)
                conf.append(float(p.scores[k]))
                boxes.append((p.polygons[k].reshape(8) if task == 1 else p.xyxy[k]).astype(float))
        order = np.argsort(-np.array(conf), kind="stable")
        tp, fp = np.zeros(len(order)), np.zeros(len(order))
        for d, k in enumerate(order):
            r, bb = recs[image_ids[k]], boxes[k]
            ovmax, jmax = -np.inf, -1
            g = r["bbox"]
            if g.size:
                if task == 1:
                    gx0, gy0 = g[:, 0::2].min(1), g[:, 1::2].min(1)
                    gx1, gy1 = g[:, 0::2].max(1), g[:, 1::2].max(1)
                    bx0, by0, bx1, by1 = bb[0::2].min(), bb[1::2].min(), bb[0::2].max(), \
                        bb[1::2].max()
                else:
                    gx0, gy0, gx1, gy1 = g[:, 0], g[:, 1], g[:, 2], g[:, 3]
                    bx0, by0, bx1, by1 = bb
                iw = np.maximum(np.minimum(gx1, bx1) - np.maximum(gx0, bx0) + 1.0, 0.0)
                ih = np.maximum(np.minimum(gy1, by1) - np.maximum(gy0, by0) + 1.0, 0.0)
                inters = iw * ih
                uni = ((bx1 - bx0 + 1.0) * (by1 - by0 + 1.0)
                       + (gx1 - gx0 + 1.0) * (gy1 - gy0 + 1.0) - inters)
                overlaps = inters / uni
                if task == 1:
                    keep = np.where(overlaps > 0)[0]
                    if len(keep):
                        ovs = [poly_iou(g[j], bb) for j in keep]
                        ovmax, jmax = np.max(ovs), int(keep[int(np.argmax(ovs))])
                else:
                    ovmax, jmax = np.max(overlaps), int(np.argmax(overlaps))
            if ovmax > iou:
                if not r["difficult"][jmax]:
                    if not r["det"][jmax]:
                        tp[d] = 1.0
                        r["det"][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        if npos == 0:
            aps[name] = float("nan")
            continue
        fp, tp = np.cumsum(fp), np.cumsum(tp)
        rec = tp / float(npos)
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[name] = oracle_ap(rec, prec, use_07)
    return aps


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
    assert evaluate(gt, pred, protocol="dota", match=">=").mAP == pytest.approx(1.0)
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
