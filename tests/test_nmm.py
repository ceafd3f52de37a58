"""Greedy NMM, NMM and the merge step against plain-Python references of SAHI's semantics.

The references follow ``sahi.postprocess.combine`` step by step (greedy_nmm, nmm and the
``has_match`` / ``merge_object_prediction_pair`` merge), on lists, with ties broken by lower
index (SAHI's torch sort is unstable) and a zero denominator giving a metric of 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from danlu.boxes.merge import greedy_nmm, merge_predictions, nmm


def metric(b, p, q, ios):
    """Metric with ``p`` as the reference box, in SAHI's operation order."""
    iw = max(min(b[q][2], b[p][2]) - max(b[q][0], b[p][0]), 0.0)
    ih = max(min(b[q][3], b[p][3]) - max(b[q][1], b[p][1]), 0.0)
    inter = iw * ih
    ap = (b[p][2] - b[p][0]) * (b[p][3] - b[p][1])
    aq = (b[q][2] - b[q][0]) * (b[q][3] - b[q][1])
    den = min(aq, ap) if ios else (aq - inter) + ap
    return inter / den if den > 0 else 0.0


def ref_greedy(b, s, lab, thr, ios):
    order = sorted(range(len(b)), key=lambda i: (-s[i], i))
    out = {}
    while order:
        p = order.pop(0)
        matched = [q for q in order if lab[q] == lab[p] and metric(b, p, q, ios) >= thr]
        order = [q for q in order if q not in matched]
        out[p] = matched
    return out


def ref_nmm(b, s, lab, thr, ios):
    order = sorted(range(len(b)), key=lambda i: (-s[i], i))
    keep_to_merge, merge_to_keep = {}, {}
    for p in order:
        others = [q for q in order if q != p]
        matched = [q for q in others if lab[q] == lab[p] and metric(b, p, q, ios) >= thr][::-1]
        if p not in merge_to_keep:
            keep_to_merge[p] = []
            for q in matched:
                if q not in merge_to_keep and q not in keep_to_merge:
                    keep_to_merge[p].append(q)
                    merge_to_keep[q] = p
        else:
            k = merge_to_keep[p]
            for q in matched:
                if q not in keep_to_merge and q not in merge_to_keep:
                    keep_to_merge[k].append(q)
                    merge_to_keep[q] = k
    return keep_to_merge


def ref_merge(b, s, lab, clusters, thr, ios):
    out_b, out_s, out_l = [], [], []
    for k, members in clusters.items():
        cur, sc, lb = list(b[k]), s[k], lab[k]
        for m in members:
            pair = [cur, list(b[m])]
            if metric(pair, 0, 1, ios) > thr:
                cur = [min(cur[0], b[m][0]), min(cur[1], b[m][1]),
                       max(cur[2], b[m][2]), max(cur[3], b[m][3])]
                lb = lb if sc > s[m] else lab[m]
                sc = max(sc, s[m])
        out_b.append(cur)
        out_s.append(sc)
        out_l.append(lb)
    return np.array(out_b).reshape(-1, 4), np.array(out_s), np.array(out_l, dtype=np.int64)


def sliced_predictions(n, seed=0, tie=False):
    """Objects seen by overlapping slices: duplicates, cut-off partial boxes, jitter."""
    r = np.random.default_rng(seed)
    c = r.uniform(0, 800, (n, 2))
    wh = r.uniform(10, 120, (n, 2))
    base = np.concatenate([c - wh / 2, c + wh / 2], 1)
    parts = [base, base + r.normal(0, 4, base.shape)]
    cut = base.copy()
    cut[:, 2] = cut[:, 0] + (cut[:, 2] - cut[:, 0]) * r.uniform(0.2, 0.9, n)  # partial boxes
    parts.append(cut)
    b = np.concatenate(parts)
    s = r.choice([0.3, 0.6, 0.9], len(b)) if tie else r.random(len(b))
    lab = r.integers(0, 3, len(b))
    return b, s, lab


@pytest.mark.parametrize("ios", [False, True])
@pytest.mark.parametrize("thr", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("tie", [False, True])
def test_clusters_and_merge_match_reference(ios, thr, tie) -> None:
    b, s, lab = sliced_predictions(60, seed=int(thr * 10) + tie, tie=tie)
    metric_name = "IOS" if ios else "IOU"
    bl = b.tolist()
    for labels in (None, lab):
        lab_ref = [0] * len(b) if labels is None else labels.tolist()
        g = greedy_nmm(b, s, labels, match_metric=metric_name, match_threshold=thr)
        assert g == ref_greedy(bl, s, lab_ref, thr, ios)
        assert list(g) == list(ref_greedy(bl, s, lab_ref, thr, ios))  # key order too
        m = nmm(b, s, labels, match_metric=metric_name, match_threshold=thr)
        assert m == ref_nmm(bl, s, lab_ref, thr, ios)
        for clusters in (g, m):
            # every index exactly once
            flat = sorted(list(clusters) + [i for v in clusters.values() for i in v])
            assert flat == list(range(len(b)))
            ob, os_, ol = merge_predictions(b, s, labels, clusters, match_metric=metric_name,
                                            match_threshold=thr)
            rb, rs, rl = ref_merge(bl, s, lab_ref, clusters, thr, ios)
            np.testing.assert_array_equal(ob, rb)
            np.testing.assert_array_equal(os_, rs)
            np.testing.assert_array_equal(ol, rl)


def test_greedy_nmm_keys_are_hard_nms_with_ge() -> None:
    from danlu.boxes.nms import nms

    b, s, _ = sliced_predictions(300, seed=3)
    g = greedy_nmm(b, s, match_threshold=0.5)
    # IoU >= t versus IoU > t only differ on exact equality, absent from random boxes
    assert list(g) == nms(b, s, 0.5).tolist()


def test_torch_and_edge_cases() -> None:
    assert greedy_nmm(np.zeros((0, 4)), np.zeros(0)) == {}
    assert nmm(np.zeros((0, 4)), np.zeros(0)) == {}
    b, s, lab = sliced_predictions(20)
    tb, ts, tl = torch.from_numpy(b), torch.from_numpy(s), torch.from_numpy(lab)
    g = greedy_nmm(tb, ts, tl, match_metric="ios")
    assert g == greedy_nmm(b, s, lab, match_metric="IOS")
    ob, os_, ol = merge_predictions(tb, ts, tl, g)
    assert isinstance(ob, torch.Tensor) and ol.dtype == torch.int64
    with pytest.raises(ValueError):
        greedy_nmm(b, s, match_metric="GIOU")
    with pytest.raises(ValueError):
        merge_predictions(b, s, lab, {0: [len(b)]})
