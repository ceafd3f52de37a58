"""Weighted boxes fusion against ensemble_boxes.weighted_boxes_fusion (the oracle).

Pixel boxes in a 4096-pixel image: dividing by 4096 is exact, so ensemble-boxes sees exactly our
boxes, normalized, and the results must agree to float rounding (in practice: exactly).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ensemble_boxes import weighted_boxes_fusion as eb_wbf

from danlu.boxes.fusion import weighted_boxes_fusion

IMG = 4096.0


def models(n_per_model: int, nmodels: int = 3, labels: int = 3, seed: int = 0, jitter=5.0,
           tie_scores: bool = False):
    r = np.random.default_rng(seed)
    c = r.uniform(100, IMG - 100, (n_per_model, 2))
    wh = r.uniform(10, 200, (n_per_model, 2))
    base = np.concatenate([c - wh / 2, c + wh / 2], 1)
    lab = r.integers(0, labels, n_per_model)
    out_b, out_s, out_l = [], [], []
    for _ in range(nmodels):
        b = np.clip(base + r.normal(0, jitter, base.shape), 0, IMG)
        b = np.concatenate([np.minimum(b[:, :2], b[:, 2:]), np.maximum(b[:, :2], b[:, 2:])], 1)
        keep = r.random(n_per_model) < 0.8  # each model misses some objects
        s = r.choice([0.25, 0.5, 0.75], keep.sum()) if tie_scores else r.random(keep.sum())
        out_b.append(b[keep])
        out_s.append(s)
        out_l.append(lab[keep])
    return out_b, out_s, out_l


def compare(bl, sl, ll, **kw):
    ours = weighted_boxes_fusion(bl, sl, ll, **kw)
    eb_kw = dict(kw)
    eb_kw["iou_thr"] = eb_kw.pop("iou_threshold", 0.55)
    eb_kw["skip_box_thr"] = eb_kw.pop("skip_box_threshold", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = eb_wbf([b / IMG for b in bl], sl, ll, **eb_kw)
    assert ours[0].shape == theirs[0].shape
    np.testing.assert_allclose(ours[0] / IMG, theirs[0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours[1], theirs[1], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(ours[2], theirs[2].astype(np.int64))
    return ours


@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg",
                                       "absent_model_aware_avg"])
@pytest.mark.parametrize("weights", [None, [2.0, 1.0, 0.5]])
def test_matches_ensemble_boxes(conf_type, weights) -> None:
    bl, sl, ll = models(400, seed=1)
    compare(bl, sl, ll, conf_type=conf_type, weights=weights)


@pytest.mark.parametrize("thr", [0.1, 0.55, 0.8])
def test_thresholds_and_options(thr) -> None:
    bl, sl, ll = models(300, seed=2, jitter=15.0)
    compare(bl, sl, ll, iou_threshold=thr)
    compare(bl, sl, ll, iou_threshold=thr, skip_box_threshold=0.3)
    compare(bl, sl, ll, iou_threshold=thr, allows_overflow=True)


def test_dense_single_label_and_ties() -> None:
    bl, sl, ll = models(2000, labels=1, seed=3, jitter=20.0)
    compare(bl, sl, ll)
    bl, sl, ll = models(12, labels=2, seed=4, tie_scores=True)
    compare(bl, sl, ll, conf_type="max")


def test_degenerate_inputs() -> None:
    # zero-area boxes are skipped, swapped corners are fixed, one huge box among small ones
    bl, sl, ll = models(200, seed=5)
    bl[0] = bl[0].copy()
    bl[0][0] = [10, 10, 10, 50]
    bl[0][1] = bl[0][1][[2, 3, 0, 1]]
    bl[1] = np.concatenate([bl[1], [[0, 0, IMG, IMG]] * 5])
    sl[1] = np.concatenate([sl[1], [0.9, 0.8, 0.7, 0.6, 0.5]])
    ll[1] = np.concatenate([ll[1], [0, 0, 0, 0, 0]])
    compare(bl, sl, ll)
    # nothing left
    b, s, lab = weighted_boxes_fusion([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0)])
    assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)


def test_torch_and_errors() -> None:
    bl, sl, ll = models(50, seed=6)
    b, s, lab = weighted_boxes_fusion([torch.from_numpy(x) for x in bl], sl, ll)
    assert isinstance(b, torch.Tensor) and lab.dtype == torch.int64
    nb, ns, _ = weighted_boxes_fusion(bl, sl, ll)
    np.testing.assert_array_equal(b.numpy(), nb)
    with pytest.raises(ValueError):
        weighted_boxes_fusion(bl, sl, ll, conf_type="median")
    with pytest.raises(ValueError):
        weighted_boxes_fusion(bl, sl, ll, weights=[1.0])
