"""Numba kernels of weighted boxes fusion (ensemble-boxes' clustering, in its precision).

Boxes arrive grouped by label, each group sorted by decreasing weighted score; the grid and the
conventions are described in :mod:`danlu.boxes._grid`. A fused box is a weighted mean of its
members, so it lies inside the bounding hull of its members: each cluster is registered in the
grid cells of that hull (extended as members join), and a new box is only compared with the
clusters registered in the cells it covers.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from danlu.boxes._grid import JIT, REGISTRATIONS_PER_BOX, grid_layout


@nb.njit(inline="always", **JIT)
def _iou_wbf(fb, c, b, j):
    """IoU of fused box ``c`` against box ``j`` as ensemble-boxes computes it (float64)."""
    xa = max(fb[c, 0], b[j, 0])
    ya = max(fb[c, 1], b[j, 1])
    xb = min(fb[c, 2], b[j, 2])
    yb = min(fb[c, 3], b[j, 3])
    inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
    area_a = (fb[c, 2] - fb[c, 0]) * (fb[c, 3] - fb[c, 1])
    area_b = (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1])
    return inter / (area_a + area_b - inter)


@nb.njit(**JIT)
def _wbf_join(fb, acc, conf, cnt, wsum, cmax, fscore, fweight, c, b, ws, wt, j, use_max):
    """Add box ``j`` to cluster ``c`` and recompute its fused box, ensemble-boxes style.

    ensemble-boxes rebuilds the fused box in a float32 buffer: coordinates accumulate as
    ``float32(acc + score * x)`` and are divided by the float64 confidence sum, then stored
    back as float32 values; the score (mean or max) and the weight sum are float32 too.
    """
    for k in range(4):
        acc[c, k] = np.float32(np.float64(acc[c, k]) + ws[j] * b[j, k])
    conf[c] += ws[j]
    wsum[c] += wt[j]
    cmax[c] = max(cmax[c], ws[j])
    cnt[c] += 1
    for k in range(4):
        fb[c, k] = np.float64(np.float32(np.float64(acc[c, k]) / conf[c]))
    if use_max:
        fscore[c] = np.float64(np.float32(cmax[c]))
    else:
        fscore[c] = np.float64(np.float32(conf[c] / cnt[c]))
    fweight[c] = np.float64(np.float32(wsum[c]))


@nb.njit(**JIT)
def _wbf_group(b, ws, wt, s, e, thr, use_max, member_of, fb, fscore, fweight, cnt, grid):
    """Cluster boxes ``[s, e)`` (sorted by weighted score) the way ensemble-boxes does.

    Each box joins the existing cluster whose *current* fused box has the highest IoU with it
    (first cluster on ties) when that IoU is > ``thr``, else starts a new cluster. Clusters are
    found through a grid: a fused box is a weighted mean of its members, so it lies inside the
    bounding hull of its members, and each cluster is registered in the cells of that hull
    (extended as members join). Returns the number of clusters, or -1 when the registrations
    exceed the budget (the caller reruns with ``grid=False``, the plain scan).
    """
    n = e - s
    acc = np.zeros((n, 4), np.float32)
    conf = np.zeros(n, np.float64)
    wsum = np.zeros(n, np.float64)
    cmax = np.zeros(n, np.float64)
    ncl = 0
    stamp = np.full(n, -1, np.int64)
    if grid:
        ok, xmin, ymin, inv, gx, gy, proper, cx1, cy1, cx2, cy2, total = grid_layout(b, s, e)
        if not ok:
            return -1
        budget = REGISTRATIONS_PER_BOX * n + 2 * gx * gy
        head = np.full(gx * gy, -1, np.int64)
        node_next = np.empty(total + 16, np.int64)
        node_cl = np.empty(total + 16, np.int64)
        nodes = 0
        hx1 = np.zeros(n, np.int64)
        hy1 = np.zeros(n, np.int64)
        hx2 = np.zeros(n, np.int64)
        hy2 = np.zeros(n, np.int64)
    for k in range(n):
        j = s + k
        best = -1
        best_iou = thr
        if grid:
            for cy in range(cy1[k], cy2[k] + 1):
                for cx in range(cx1[k], cx2[k] + 1):
                    node = head[cy * gx + cx]
                    while node >= 0:
                        c = node_cl[node]
                        node = node_next[node]
                        if stamp[c] == k:
                            continue
                        stamp[c] = k
                        iou = _iou_wbf(fb, c, b, j)
                        if iou > best_iou or (iou == best_iou and best >= 0 and c < best):
                            best = c
                            best_iou = iou
        else:
            for c in range(ncl):
                iou = _iou_wbf(fb, c, b, j)
                if iou > best_iou:
                    best = c
                    best_iou = iou
        if best < 0:
            c = ncl
            ncl += 1
            for t in range(4):
                fb[c, t] = b[j, t]
                acc[c, t] = np.float32(ws[j] * b[j, t])
            conf[c] = ws[j]
            wsum[c] = wt[j]
            cmax[c] = ws[j]
            cnt[c] = 1
            fscore[c] = ws[j]
            fweight[c] = wt[j]
            member_of[j] = c
            if grid:
                ox1, oy1, ox2, oy2 = 0, 0, -1, -1  # empty old hull
                nx1, ny1, nx2, ny2 = cx1[k], cy1[k], cx2[k], cy2[k]
        else:
            c = best
            member_of[j] = c
            _wbf_join(fb, acc, conf, cnt, wsum, cmax, fscore, fweight, c, b, ws, wt, j, use_max)
            if grid:
                ox1, oy1, ox2, oy2 = hx1[c], hy1[c], hx2[c], hy2[c]
                nx1, ny1 = min(ox1, cx1[k]), min(oy1, cy1[k])
                nx2, ny2 = max(ox2, cx2[k]), max(oy2, cy2[k])
        if grid:
            # register the cluster in the cells its hull gained
            for cy in range(ny1, ny2 + 1):
                for cx in range(nx1, nx2 + 1):
                    if ox1 <= cx <= ox2 and oy1 <= cy <= oy2:
                        continue
                    if nodes == node_next.shape[0]:
                        if nodes >= budget:
                            return -1
                        grow = np.empty(2 * nodes, np.int64)
                        grow[:nodes] = node_next
                        node_next = grow
                        grow2 = np.empty(2 * nodes, np.int64)
                        grow2[:nodes] = node_cl
                        node_cl = grow2
                    cell = cy * gx + cx
                    node_cl[nodes] = c
                    node_next[nodes] = head[cell]
                    head[cell] = nodes
                    nodes += 1
            hx1[c], hy1[c], hx2[c], hy2[c] = nx1, ny1, nx2, ny2
    return ncl


@nb.njit(**JIT)
def wbf_sorted(b, ws, wt, starts, thr, use_max):
    """Weighted boxes fusion per group on boxes sorted by group, then by weighted score.

    Returns ``(member_of, cluster_start, fb, fscore, fweight, cnt)``: box ``k`` belongs to the
    global cluster ``member_of[k]``; group ``g``'s clusters are ``[cluster_start[g],
    cluster_start[g + 1])`` in creation order; ``fb``/``fscore``/``fweight``/``cnt`` are the
    fused box, the (not yet rescaled) score, the weight sum and the member count.
    """
    n = b.shape[0]
    member_of = np.empty(n, np.int64)
    fb = np.empty((n, 4), np.float64)
    fscore = np.empty(n, np.float64)
    fweight = np.empty(n, np.float64)
    cnt = np.zeros(n, np.int64)
    ng = starts.shape[0] - 1
    cluster_start = np.zeros(ng + 1, np.int64)
    for g in range(ng):
        s = starts[g]
        e = starts[g + 1]
        mo = np.empty(e - s, np.int64)
        fbg = np.empty((e - s, 4), np.float64)
        fsg = np.empty(e - s, np.float64)
        fwg = np.empty(e - s, np.float64)
        cng = np.zeros(e - s, np.int64)
        # the group's boxes as a local view, so the kernels index from 0
        bg = b[s:e]
        wsg = ws[s:e]
        wtg = wt[s:e]
        ncl = _wbf_group(bg, wsg, wtg, 0, e - s, thr, use_max, mo, fbg, fsg, fwg, cng, True)
        if ncl < 0:
            cng[:] = 0
            ncl = _wbf_group(bg, wsg, wtg, 0, e - s, thr, use_max, mo, fbg, fsg, fwg, cng,
                             False)
        c0 = cluster_start[g]
        cluster_start[g + 1] = c0 + ncl
        for k in range(e - s):
            member_of[s + k] = c0 + mo[k]
        fb[c0:c0 + ncl] = fbg[:ncl]
        fscore[c0:c0 + ncl] = fsg[:ncl]
        fweight[c0:c0 + ncl] = fwg[:ncl]
        cnt[c0:c0 + ncl] = cng[:ncl]
    total = cluster_start[ng]
    return member_of, cluster_start, fb[:total], fscore[:total], fweight[:total], cnt[:total]
