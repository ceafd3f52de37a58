"""COCO metrics against pycocotools (the oracle), on randomized datasets with crowd boxes,
ignored ground truth, tied scores, empty images, classes without ground truth and boxes outside
the area ranges."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from danlu import evaluate
from danlu.errors import ConfigError
from danlu.evaluate.coco import default_iou_thresholds
from danlu.structures import Dataset, Detections, Sample

pycocotools = pytest.importorskip("pycocotools")
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

CLASSES = ["a", "b", "c", "d", "e", "never"]  # "never" has no ground truth


def _boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    # A mix of small, medium and large boxes; half on an integer grid so IoUs tie exactly.
    xy = rng.uniform(0, 300, (n, 2))
    wh = np.exp(rng.uniform(np.log(3), np.log(250), (n, 2)))
    grid = rng.random(n) < 0.5
    xy[grid], wh[grid] = np.round(xy[grid]), np.round(wh[grid]) + 1
    return np.concatenate([xy, xy + wh], 1)


def random_case(seed: int, *, with_area: bool = False) -> tuple[Dataset, list[Detections]]:
    rng = np.random.default_rng(seed)
    samples, preds = [], []
    for i in range(int(rng.integers(3, 12))):
        n = int(rng.integers(0, 8)) if rng.random() > 0.15 else 0
        boxes = _boxes(rng, n)
        labels = rng.integers(0, len(CLASSES) - 1, n)
        flags = {"iscrowd": rng.random(n) < 0.12, "ignore": rng.random(n) < 0.1}
        extra = {"area": (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                 * rng.uniform(0.3, 1.0, n)} if with_area else None
        gt = Detections(boxes, labels, flags=flags, extra=extra)
        samples.append(Sample(None, 400, 400, gt, id=f"im{i}"))
        # Detections: jittered copies of the ground truth (some relabelled), duplicates, noise.
        m = int(rng.integers(0, 14)) if rng.random() > 0.1 else 0
        if n and m:
            src = rng.integers(0, n, m)
            d = boxes[src] + rng.normal(0, 4, (m, 4)) * (rng.random((m, 1)) < 0.7)
            lab = np.where(rng.random(m) < 0.8, labels[src], rng.integers(0, len(CLASSES), m))
        else:
            d, lab = _boxes(rng, m), rng.integers(0, len(CLASSES), m)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 0.5)
        scores = np.round(rng.random(m), 1)  # many ties
        preds.append(Detections(d, lab, scores=scores))
    return Dataset(samples, CLASSES), preds


def pycocotools_eval(gt: Dataset, preds: list[Detections], *, iou_thresholds=None,
                     max_dets=(1, 10, 100), area_ranges=None) -> COCOeval:
    """The oracle: pycocotools fed the same numbers (ignored ground truth as an area outside
    every range, the meaning danlu gives it)."""
    images = [{"id": i, "width": s.width, "height": s.height} for i, s in enumerate(gt)]
    anns, ann_id = [], 1
    for i, s in enumerate(gt):
        d = s.detections
        for k in range(len(d)):
            x1, y1, x2, y2 = (float(v) for v in d.xyxy[k])
            w, h = x2 - x1, y2 - y1
            area = float(d.extra["area"][k]) if "area" in d.extra else w * h
            if d.flag("ignore")[k] or d.flag("difficult")[k]:
                area = float("-inf")
            anns.append({"id": ann_id, "image_id": i, "category_id": int(d.labels[k]),
                         "bbox": [x1, y1, w, h], "area": area,
                         "iscrowd": int(d.flag("iscrowd")[k])})
            ann_id += 1
    cats = [{"id": c, "name": n} for c, n in enumerate(gt.class_names)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": anns, "categories": cats}
        coco_gt.createIndex()
        res = []
        for i, d in enumerate(preds):
            for k in range(len(d)):
                x1, y1, x2, y2 = (float(v) for v in d.xyxy[k])
                res.append({"image_id": i, "category_id": int(d.labels[k]),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(d.scores[k])})
        coco_dt = coco_gt.loadRes(res)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if iou_thresholds is not None:
            ev.params.iouThrs = np.asarray(iou_thresholds, float)
        ev.params.maxDets = list(max_dets)
        if area_ranges is not None:
            ev.params.areaRng = [list(v) for v in area_ranges.values()]
            ev.params.areaRngLbl = list(area_ranges)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def assert_same(ours, ev: COCOeval) -> None:
    np.testing.assert_allclose(ours.stats, ev.stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.precision, ev.eval["precision"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, ev.eval["recall"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_default_params_match_pycocotools(seed: int) -> None:
    gt, preds = random_case(seed)
    if sum(len(p) for p in preds) == 0:  # pycocotools' loadRes cannot take an empty list
        preds[0] = Detections([[1, 1, 20, 20]], [0], scores=[0.5])
    ours = evaluate(gt, preds, protocol="coco")
    assert_same(ours, pycocotools_eval(gt, preds))
    for name, value in zip(["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100",
                            "ARs", "ARm", "ARl"], ours.stats, strict=True):
        assert getattr(ours, name) == value
    assert np.isnan(ours.per_class["never"])


@pytest.mark.parametrize("seed", range(4))
def test_coco_area_from_extra(seed: int) -> None:
    gt, preds = random_case(100 + seed, with_area=True)
    preds[0] = Detections.concat([preds[0], Detections([[1, 1, 300, 300]], [0], scores=[0.3])])
    assert_same(evaluate(gt, preds), pycocotools_eval(gt, preds))


@pytest.mark.parametrize("seed", range(3))
def test_custom_params_match_pycocotools(seed: int) -> None:
    gt, preds = random_case(200 + seed)
    preds[0] = Detections.concat([preds[0], Detections([[1, 1, 30, 30]], [1], scores=[0.7])])
    opts = {"iou_thresholds": [0.3, 0.5, 0.75, 0.9], "max_dets": (1, 3, 5)}
    ours = evaluate(gt, preds, **opts)
    assert_same(ours, pycocotools_eval(gt, preds, **opts))
    ranges = {"all": (0.0, 1e10), "small": (0.0, 400.0), "medium": (400.0, 4000.0),
              "large": (4000.0, 1e10)}
    ours = evaluate(gt, preds, area_ranges=ranges)
    assert_same(ours, pycocotools_eval(gt, preds, area_ranges=ranges))


def test_per_class_ap_is_mean_of_class_precision() -> None:
    gt, preds = random_case(7)
    ev = pycocotools_eval(gt, preds)
    ours = evaluate(gt, preds)
    for k, name in enumerate(CLASSES):
        s = ev.eval["precision"][:, :, k, 0, -1]
        expected = np.mean(s[s > -1]) if (s > -1).any() else np.nan
        np.testing.assert_allclose(ours.per_class[name], expected, rtol=0, atol=1e-12)
    rec, prec = ours.curves["a"]
    assert rec.shape == prec.shape == (101,)


def test_default_thresholds_are_pycocotools() -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        from pycocotools.cocoeval import Params
        assert np.array_equal(default_iou_thresholds(), Params(iouType="bbox").iouThrs)


def test_empty_predictions_and_empty_dataset() -> None:
    gt, _ = random_case(3)
    r = evaluate(gt, [Detections.empty(with_scores=True) for _ in gt])
    assert r.AP in (0.0, -1.0) and r.stats.shape == (12,)
    r = evaluate(Dataset([], ["a"]), [])
    assert np.all(r.stats == -1)


def test_predictions_as_dataset_are_matched_by_id() -> None:
    gt, preds = random_case(5)
    pred_ds = Dataset([Sample(None, 400, 400, p, id=s.id) for s, p in zip(gt, preds,
                                                                            strict=True)][::-1],
                      CLASSES)
    a, b = evaluate(gt, preds), evaluate(gt, pred_ds)
    assert np.array_equal(a.stats, b.stats)
    bad = Dataset([Sample(None, 4, 4, preds[0], id="nope")], CLASSES)
    with pytest.raises(ConfigError):
        evaluate(gt, bad)


def test_bad_input() -> None:
    gt, preds = random_case(1)
    with pytest.raises(ConfigError):
        evaluate(gt, preds[:-1])
    with pytest.raises(ConfigError):
        evaluate(gt, preds, protocol="nope")
    with pytest.raises(ConfigError):
        evaluate(gt, [Detections([[0, 0, 1, 1]], [0])] * len(gt))  # no scores
    with pytest.raises(ConfigError):
        evaluate(gt, [Detections([[0, 0, 1, 1]], [99], scores=[1])] * len(gt))


def test_to_dict_is_json_ready() -> None:
    import orjson

    gt, preds = random_case(2)
    d = evaluate(gt, preds).to_dict(curves=True)
    assert len(d["stats"]) == 12 and "AP50" in d and d["per_class"]["never"] is None
    orjson.dumps(d)


def many_detections_case(seed: int) -> tuple[Dataset, list[Detections]]:
    """Crowded images: up to 250 detections of one class per image (more than maxDets=100),
    crowd and ignored ground truth, boxes of every area range, many tied scores."""
    rng = np.random.default_rng(seed)
    samples, preds = [], []
    for i in range(int(rng.integers(2, 6))):
        n = int(rng.integers(1 if i == 0 else 0, 25))
        boxes = _boxes(rng, n)
        labels = (rng.random(n) < 0.2).astype(np.int64)  # mostly class 0
        flags = {"iscrowd": rng.random(n) < 0.1, "ignore": rng.random(n) < 0.1}
        samples.append(Sample(None, 400, 400, Detections(boxes, labels, flags=flags), id=i))
        m = 260 if i == 0 else (int(rng.integers(0, 300)) if rng.random() > 0.2 else 0)
        if n:
            src = rng.integers(0, n, m)
            d = boxes[src] + rng.normal(0, 3, (m, 4))
            lab = np.where(rng.random(m) < 0.9, labels[src], rng.integers(0, 3, m))
        else:
            d, lab = _boxes(rng, m), rng.integers(0, 3, m)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 0.5)
        preds.append(Detections(d, lab, scores=np.round(rng.random(m), 2)))
    return Dataset(samples, CLASSES), preds


@pytest.mark.parametrize("seed", range(4))
def test_more_than_max_dets_per_image(seed: int) -> None:
    gt, preds = many_detections_case(300 + seed)
    if sum(len(p) for p in preds) == 0:
        preds[0] = Detections([[1, 1, 20, 20]], [0], scores=[0.5])
    assert max(int(np.bincount(p.labels).max()) if len(p) else 0 for p in preds) > 100
    assert_same(evaluate(gt, preds), pycocotools_eval(gt, preds))
    opts = {"max_dets": (5, 2, 30), "iou_thresholds": [0.9, 0.5, 0.65]}  # unsorted, as given
    assert_same(evaluate(gt, preds, **opts), pycocotools_eval(gt, preds, **opts))


def test_exact_ties_and_degenerate_boxes() -> None:
    # Two ground truths with the same IoU to a detection (pycocotools keeps the last one at the
    # best IoU), zero-area detections, a crowd box covering everything, equal scores.
    g = Detections([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 100, 100], [50, 50, 60, 60]],
                   [0, 0, 0, 1], flags={"iscrowd": [False, False, True, False]})
    d = Detections([[2.5, 0, 12.5, 10], [2.5, 0, 12.5, 10], [20, 20, 20, 30], [0, 0, 10, 10],
                    [50, 50, 60, 60], [51, 50, 61, 60]], [0, 0, 0, 0, 1, 1],
                   scores=[0.5, 0.5, 0.5, 0.4, 0.9, 0.9])
    gt = Dataset([Sample(None, 100, 100, g, id=0),
                  Sample(None, 100, 100, Detections.empty(), id=1)], CLASSES)
    preds = [d, Detections([[1, 1, 5, 5]], [2], scores=[0.3])]
    assert_same(evaluate(gt, preds), pycocotools_eval(gt, preds))


def test_threads_do_not_change_the_numbers() -> None:
    from danlu.evaluate import coco as coco_module
    from danlu.evaluate._coco_kernels import coco_evaluate
    from danlu.evaluate._common import flatten

    gt, preds = random_case(11)
    g, d = flatten(gt.detections()), flatten(preds, scores=True)
    c = coco_module.coco_columns(g, d)
    args = (g.image, g.labels, c["g_box"], c["g_area"], g.crowd, c["g_ignore"], d.image,
            d.labels, c["d_box"], c["d_area"], d.scores, len(CLASSES), default_iou_thresholds(),
            np.array(list(coco_module.AREA_RANGES.values())), np.array([1, 10, 100]),
            coco_module.default_recall_thresholds())
    one = coco_evaluate(*args, workers=1)
    for workers in (2, 3):
        many = coco_evaluate(*args, workers=workers)
        assert np.array_equal(one[0], many[0]) and np.array_equal(one[1], many[1])


def test_argsort_descending_is_a_stable_sort() -> None:
    from danlu.evaluate._coco_kernels import argsort_descending

    rng = np.random.default_rng(0)
    for x in (rng.random(1000), np.round(rng.normal(size=1000), 1),
              rng.random(500).astype(np.float32).astype(np.float64),
              np.array([0.0, -0.0, -1.5, 2.0, -0.0, 0.0, np.inf, -np.inf]), np.zeros(0)):
        assert np.array_equal(argsort_descending(x), np.argsort(-x, kind="stable"))
