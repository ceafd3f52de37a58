"""Soft-NMS against ensemble-boxes (the oracle) and a direct transcription of the definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ensemble_boxes import soft_nms as eb_soft_nms
from ensemble_boxes.ensemble_boxes_nms import cpu_soft_nms_float
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.boxes.soft_nms import soft_nms

METHODS = {"linear": 1, "gaussian": 2}


def unit_boxes(n: int, seed: int = 0, size: float = 0.06) -> tuple[np.ndarray, np.ndarray]:
    """Boxes inside [0, 1] (ensemble-boxes clips to it), distinct random scores."""
    r = np.random.default_rng(seed)
    c = r.uniform(size, 1 - size, (n, 2))
    wh = r.uniform(size / 10, size, (n, 2))
    return np.concatenate([c - wh / 2, c + wh / 2], 1), r.random(n)


def oracle(b, s, method, nt, sigma, thresh):
    """ensemble-boxes' kernel, read back: kept indices and their decayed scores, in its order."""
    sc = s.copy()
    keep = cpu_soft_nms_float(b.copy(), sc, Nt=nt, sigma=sigma, thresh=thresh,
                              method=METHODS[method])
    return keep, sc[sc > thresh]


@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("n,seed", [(1, 0), (2, 1), (300, 2), (2000, 3)])
@pytest.mark.parametrize("nt,sigma", [(0.3, 0.5), (0.5, 0.1), (0.0, 2.0)])
def test_matches_ensemble_boxes_kernel(method, n, seed, nt, sigma) -> None:
    b, s = unit_boxes(n, seed)
    keep, dec = soft_nms(b, s, method=method, iou_threshold=nt, sigma=sigma,
                         score_threshold=0.001)
    rk, rd = oracle(b, s, method, nt, sigma, 0.001)
    np.testing.assert_array_equal(keep, rk)
    np.testing.assert_allclose(dec, rd, rtol=1e-12, atol=0)


def test_public_api_and_the_one_deliberate_difference() -> None:
    b, s = unit_boxes(500, 7)
    lab = np.random.default_rng(0).integers(0, 4, 500)
    keep, dec = soft_nms(b, s, method="gaussian", sigma=0.5, score_threshold=0.05, labels=lab)
    eb_b, eb_s, eb_l = eb_soft_nms([b], [s], [lab], method=2, iou_thr=0.3, sigma=0.5,
                                   thresh=0.05)
    # same surviving boxes (per label) ...
    assert len(keep) == len(eb_b)
    ours = sorted(map(tuple, np.c_[b[keep], lab[keep]].tolist()))
    theirs = sorted(map(tuple, np.c_[eb_b, eb_l].tolist()))
    assert ours == theirs
    # ... but ensemble-boxes reports the original scores, we the decayed ones
    np.testing.assert_array_equal(np.sort(eb_s), np.sort(s[keep]))
    assert np.all(dec <= s[keep]) and np.any(dec < s[keep])
    # and our output is sorted by decayed score
    assert np.all(np.diff(dec) <= 0)


def test_labels_are_independent() -> None:
    b, s = unit_boxes(400, 9)
    lab = np.random.default_rng(1).integers(0, 3, 400)
    keep, dec = soft_nms(b, s, labels=lab)
    got = dict(zip(keep.tolist(), dec.tolist(), strict=True))
    for c in range(3):
        idx = np.flatnonzero(lab == c)
        k, d = soft_nms(b[idx], s[idx])
        assert dict(zip(idx[k].tolist(), d.tolist(), strict=True)) == {
            i: v for i, v in got.items() if lab[i] == c}


def test_pixel_scale_invariance_and_torch() -> None:
    b, s = unit_boxes(300, 4)
    k1, d1 = soft_nms(b, s)
    k2, d2 = soft_nms(torch.from_numpy(b * 4096), torch.from_numpy(s.astype(np.float32)))
    assert isinstance(k2, torch.Tensor) and k2.dtype == torch.int64 and d2.dtype == torch.float32
    np.testing.assert_array_equal(k1, k2.numpy())
    np.testing.assert_allclose(d1, d2.numpy(), rtol=1e-6)


def test_edge_cases() -> None:
    k, d = soft_nms(np.zeros((0, 4)), np.zeros(0))
    assert k.shape == (0,) and d.shape == (0,)
    # zero-area boxes are kept and never decayed (ensemble-boxes drops them)
    b = np.array([[0, 0, 10, 10], [5, 5, 5, 5], [0, 0, 10, 10]], float)
    k, d = soft_nms(b, np.array([0.9, 0.8, 0.7]), method="linear", iou_threshold=0.5)
    # box 2 duplicates box 0: IoU 1, decayed to 0 and dropped; the zero-area box survives
    assert k.tolist() == [0, 1] and d.tolist() == [0.9, 0.8]
    with pytest.raises(ValueError):
        soft_nms(b, np.array([0.9, np.nan, 0.7]))
    with pytest.raises(ValueError):
        soft_nms(b, np.ones(3), method="nope")


def definition(b, s, method, nt, sigma, thresh):
    """Soft-NMS straight from the paper's pseudo-code (ties: lower index), all pairs."""
    s = s.astype(float).copy()
    left = list(range(len(b)))
    out = []
    while left:
        m = max(left, key=lambda i: (s[i], -i))
        left.remove(m)
        out.append(m)
        for i in left:
            xx1, yy1 = max(b[m, 0], b[i, 0]), max(b[m, 1], b[i, 1])
            xx2, yy2 = min(b[m, 2], b[i, 2]), min(b[m, 3], b[i, 3])
            inter = max(0.0, xx2 - xx1) * max(0.0, yy2 - yy1)
            am = (b[m, 2] - b[m, 0]) * (b[m, 3] - b[m, 1])
            ai = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
            iou = inter / (am + ai - inter) if am + ai - inter > 0 else 0.0
            if method == "linear":
                if iou > nt:
                    s[i] *= 1 - iou
            else:
                s[i] *= np.exp(-(iou * iou) / sigma)
    return [i for i in out if s[i] > thresh], s


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 30), st.integers(0, 10_000), st.sampled_from(["linear", "gaussian"]),
       st.booleans())
def test_matches_definition_with_ties(n, seed, method, tie) -> None:
    r = np.random.default_rng(seed)
    c = r.uniform(0, 50, (n, 2))
    wh = r.uniform(1, 30, (n, 2))
    b = np.concatenate([c, c + wh], 1)
    s = r.choice([0.3, 0.6, 0.9], n) if tie else r.random(n)
    keep, dec = soft_nms(b, s, method=method, iou_threshold=0.3, sigma=0.5,
                         score_threshold=0.01)
    ref, rs = definition(b, s, method, 0.3, 0.5, 0.01)
    assert sorted(keep.tolist()) == sorted(ref)
    np.testing.assert_allclose(dec, rs[keep], rtol=1e-12)
