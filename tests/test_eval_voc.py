"""Pascal VOC AP against an oracle written from the official definitions: the devkit's loop
over detections (VOCevaldet.m / py-faster-rcnn voc_eval.py), kept apart from the fast code."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu import evaluate
from danlu.errors import ConfigError
from danlu.evaluate.reference import devkit_ap, devkit_voc
from danlu.evaluate.voc import average_precision
from danlu.structures import Dataset, Detections, Sample

CLASSES = ["a", "b", "c", "never"]


# --- the oracle: danlu.evaluate.reference, the devkit loop -------------------------------------
def oracle_voc(gt: Dataset, preds: list[Detections], *, use_07: bool, iou: float = 0.5,
               strict: bool = False, plus_one: float = 0.0) -> dict[str, float]:
    return devkit_voc(gt, preds, use_07=use_07, iou=iou, match=">" if strict else ">=",
                      plus_one=plus_one)


# --- random cases -------------------------------------------------------------------------------
def random_case(seed: int, *, integer: bool = True) -> tuple[Dataset, list[Detections]]:
    rng = np.random.default_rng(seed)
    samples, preds = [], []
    for i in range(int(rng.integers(1, 10))):
        n = int(rng.integers(0, 7)) if rng.random() > 0.15 else 0
        xy = rng.uniform(0, 200, (n, 2))
        wh = rng.uniform(2, 80, (n, 2))
        boxes = np.concatenate([xy, xy + wh], 1)
        if integer:
            boxes = np.round(boxes)
        labels = rng.integers(0, 3, n)
        flags = {"difficult": rng.random(n) < 0.2}
        samples.append(Sample(None, 300, 300, Detections(boxes, labels, flags=flags), id=i))
        m = int(rng.integers(0, 12)) if rng.random() > 0.1 else 0
        if n and m:
            src = rng.integers(0, n, m)
            d = boxes[src] + rng.normal(0, 5, (m, 4)) * (rng.random((m, 1)) < 0.7)  # duplicates
            lab = np.where(rng.random(m) < 0.85, labels[src], rng.integers(0, 4, m))
        else:
            d = np.concatenate([rng.uniform(0, 200, (m, 2))] * 2, 1) + [0, 0, 20, 20]
            lab = rng.integers(0, 4, m)
        if integer:
            d = np.round(d)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        preds.append(Detections(d, lab, scores=np.round(rng.random(m), 1)))  # tied scores
    return Dataset(samples, CLASSES), preds


def assert_aps_equal(ours: dict[str, float], expected: dict[str, float]) -> None:
    assert ours.keys() == expected.keys()
    for k in ours:
        if np.isnan(expected[k]):
            assert np.isnan(ours[k]), k
        else:
            assert abs(ours[k] - expected[k]) <= 1e-9, (k, ours[k], expected[k])


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("protocol", ["voc07", "voc12"])
@pytest.mark.parametrize("match", [">=", ">"])
def test_voc_matches_devkit_oracle(seed: int, protocol: str, match: str) -> None:
    gt, preds = random_case(seed, integer=seed % 2 == 0)
    r = evaluate(gt, preds, protocol=protocol, match=match)
    expected = oracle_voc(gt, preds, use_07=protocol == "voc07", strict=match == ">")
    assert_aps_equal(r.per_class, expected)
    valid = [v for v in expected.values() if not np.isnan(v)]
    if valid:
        assert abs(r.mAP - np.mean(valid)) <= 1e-9
    else:
        assert np.isnan(r.mAP)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), iou=st.sampled_from([0.3, 0.5, 0.7]))
def test_voc_hypothesis(seed: int, iou: float) -> None:
    gt, preds = random_case(seed)
    r = evaluate(gt, preds, protocol="voc12", iou=iou)
    assert_aps_equal(r.per_class, oracle_voc(gt, preds, use_07=False, iou=iou))


def test_threshold_at_exactly_half() -> None:
    # IoU exactly 0.5: a match for the devkit (>=), a miss for py-faster-rcnn (>).
    gt = Dataset([Sample(None, 50, 50, Detections([[0, 0, 10, 10]], [0]), id=0)], ["a"])
    pred = [Detections([[0, 0, 10, 20]], [0], scores=[0.9])]
    assert evaluate(gt, pred, protocol="voc12").mAP == 1.0
    assert evaluate(gt, pred, protocol="voc12", match=">").mAP == 0.0


def test_difficult_and_duplicates() -> None:
    gt = Dataset([Sample(None, 50, 50, Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0],
                                                  flags={"difficult": [False, True]}), id=0)],
                 ["a"])
    # A duplicate of the first box is a FP; a match of the difficult box is neither.
    pred = [Detections([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]], [0, 0, 0],
                       scores=[0.9, 0.8, 0.7])]
    r = evaluate(gt, pred, protocol="voc12")
    assert r.num_gt == {"a": 1}
    assert r.mAP == pytest.approx(1.0)
    rec, prec = r.curves["a"]
    assert rec.tolist() == [1.0, 1.0] and prec.tolist() == [1.0, 0.5]


def test_plus_one_devkit_iou_equals_continuous_iou_of_converted_boxes() -> None:
    rng = np.random.default_rng(0)
    one_based = rng.integers(1, 60, (500, 4)).astype(float)
    one_based[:, 2:] = one_based[:, :2] + rng.integers(0, 40, (500, 2))  # xmax >= xmin
    a, b = one_based[:250], one_based[250:]

    def devkit(bb: np.ndarray, g: np.ndarray) -> np.ndarray:  # VOCevaldet.m, +1 inclusive
        iw = np.minimum(bb[:, 2], g[:, 2]) - np.maximum(bb[:, 0], g[:, 0]) + 1
        ih = np.minimum(bb[:, 3], g[:, 3]) - np.maximum(bb[:, 1], g[:, 1]) + 1
        ua = ((bb[:, 2] - bb[:, 0] + 1) * (bb[:, 3] - bb[:, 1] + 1)
              + (g[:, 2] - g[:, 0] + 1) * (g[:, 3] - g[:, 1] + 1) - iw * ih)
        return np.where((iw > 0) & (ih > 0), iw * ih / ua, 0.0)

    from danlu.evaluate.voc import box_iou_pairs

    def convert(x: np.ndarray) -> np.ndarray:  # the VOC reader's conversion
        return x - [1, 1, 0, 0]

    assert np.array_equal(devkit(a, b), box_iou_pairs(convert(a), convert(b)))
    # And the whole evaluation: the devkit on 1-based boxes == ours on converted boxes.
    gt, preds = random_case(3, integer=True)
    gt1 = Dataset([Sample(None, 1, 1, Detections(s.detections.xyxy + [1, 1, 0, 0],
                                                 s.detections.labels, flags=s.detections.flags),
                          id=s.id) for s in gt], CLASSES)
    preds1 = [Detections(p.xyxy + [1, 1, 0, 0], p.labels, scores=p.scores) for p in preds]
    expected = oracle_voc(gt1, preds1, use_07=False, plus_one=1.0)
    assert_aps_equal(evaluate(gt, preds, protocol="voc12").per_class, expected)


def test_average_precision_known_values() -> None:
    assert average_precision(np.array([1.0]), np.array([1.0])) == 1.0
    assert average_precision(np.array([]), np.array([])) == 0.0
    assert average_precision(np.array([]), np.array([]), eleven_point=True) == 0.0
    # a perfect curve is exactly 1 (the devkit's running sum of p / 11 gives 1 + 2.2e-16)
    assert average_precision(np.array([1.0]), np.array([1.0]), eleven_point=True) == 1.0
    assert devkit_ap(np.array([1.0]), np.array([1.0]), True) == 1.0000000000000002
    rec, prec = np.array([0.25, 0.5, 0.5, 0.75]), np.array([1.0, 1.0, 2 / 3, 0.75])
    assert average_precision(rec, prec) == pytest.approx(0.5 + 0.25 * 0.75)


def test_empty_images_and_no_predictions() -> None:
    gt, _ = random_case(4)
    r = evaluate(gt, [Detections.empty(with_scores=True) for _ in gt], protocol="voc07")
    assert all(v == 0.0 or np.isnan(v) for v in r.per_class.values())
    r = evaluate(Dataset([], ["a"]), [], protocol="voc12")
    assert np.isnan(r.mAP)


def test_bad_options() -> None:
    gt, preds = random_case(1)
    with pytest.raises(ConfigError):
        evaluate(gt, preds, protocol="voc12", match="=")
    with pytest.raises(ConfigError):
        evaluate(gt, preds, protocol="voc12", iou=0.0)


# --- the fast paths -----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("match", [">=", ">"])
def test_two_thread_path_matches_oracle(seed: int, match: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # Large inputs run on two threads (halves of the detections, then of the classes); force it.
    from danlu.evaluate import voc

    monkeypatch.setattr(voc, "_WORKERS", 2)
    monkeypatch.setattr(voc, "_THREADED_MIN", 0)
    gt, preds = random_case(seed, integer=seed % 2 == 0)
    r = evaluate(gt, preds, protocol="voc12", match=match)
    assert_aps_equal(r.per_class, oracle_voc(gt, preds, use_07=False, strict=match == ">"))


@pytest.mark.parametrize("seed", range(12))
def test_pair_iou_path_matches_oracle(seed: int) -> None:
    # voc_style_ap with an IoU callback over candidate pairs (the polygon path) agrees too.
    from danlu.evaluate._common import align_predictions, flatten
    from danlu.evaluate.voc import box_iou_pairs, voc_style_ap

    gt, preds = random_case(seed)
    g, d = flatten(gt.detections()), flatten(align_predictions(gt, preds), scores=True)
    r = voc_style_ap(g, d, num_images=len(gt), class_names=gt.class_names, iou=0.5, match=">=",
                     eleven_point=seed % 2 == 0, protocol="voc", params={},
                     polygon_iou=lambda i, j: box_iou_pairs(d.xyxy[i], g.xyxy[j]))
    assert_aps_equal(r.per_class, oracle_voc(gt, preds, use_07=seed % 2 == 0))


def test_score_order_special_values() -> None:
    # Ties (0.0 with -0.0 too) keep input order, NaN comes last (as np.argsort(-s, stable)),
    # negative, infinite and full-precision float64 scores sort like numbers.
    rng = np.random.default_rng(5)
    special = [0.0, -0.0, np.nan, np.inf, -np.inf, -1.5, 1e-300, -1e-300, 0.5, 0.5]
    for seed in range(6):
        gt, preds = random_case(100 + seed)
        preds = [Detections(p.xyxy, p.labels,
                            scores=rng.choice(special + list(rng.normal(size=4)), len(p)))
                 for p in preds]
        r = evaluate(gt, preds, protocol="voc12")
        assert_aps_equal(r.per_class, oracle_voc(gt, preds, use_07=False))


def test_radix_sort_is_stable() -> None:
    from danlu.evaluate.voc import _radix_sort

    rng = np.random.default_rng(0)
    for keys in (rng.integers(0, 2**63, 3000, dtype=np.uint64) | np.uint64(1 << 63),
                 rng.integers(0, 40, 3000).astype(np.uint64) << np.uint64(29),
                 np.full(10, 7, np.uint64), np.zeros(0, np.uint64), np.array([5], np.uint64)):
        values = np.arange(len(keys), dtype=np.int64)
        expected = np.argsort(keys, kind="stable")
        k, v = keys.copy(), values.copy()
        _radix_sort(k, v)
        assert np.array_equal(v, expected) and np.array_equal(k, keys[expected])


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=40), st.booleans())
def test_average_precision_matches_the_devkit_formula(hits, eleven):
    tp = np.cumsum([h for h, _ in hits], dtype=float)
    fp = np.cumsum([not h for h, _ in hits], dtype=float)
    npos = max(int(tp[-1]) if len(tp) else 0, 1) + (hits[0][1] if hits else 0)
    rec, prec = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    want = devkit_ap(rec, prec, eleven)
    assert abs(average_precision(rec, prec, eleven_point=eleven) - want) <= 1e-12
