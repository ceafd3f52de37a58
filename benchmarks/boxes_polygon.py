"""Polygon (oriented-box) IoU matrix: danlu.boxes.polygon.polygon_iou against shapely.

Two cases, each ``n`` random rotated rectangles (sides 10-200 px, any angle; seeded) against
another ``n``:

- sparse: spread over a 4000 x 4000 image, as in a large aerial scene; most pairs are far apart
  and the enclosing-box pre-filter decides them.
- dense: packed into a 500 x 500 image, so a large share of the pairs overlap and must really be
  clipped; this measures the clipping itself.

Peers, all computing the same ``[n, n]`` matrix from polygons built once, outside the timing:

- shapely pair by pair: ``a.intersection(b).area`` for every pair, union by inclusion-exclusion
  (the natural way to write it);
- shapely vectorized: shapely 2's ufunc ``shapely.intersection(A[:, None], B[None, :])``;
- shapely STRtree + vectorized: an R-tree query for the candidate pairs, then the ufunc on those
  only (the strongest shapely way we know).

Agreement: max |ours - peer| <= 1e-6 over the whole matrix.
"""

from __future__ import annotations

import numpy as np
import shapely

from benchmarks._common import Row, measure
from danlu.boxes.convert import cxcywha_to_polygon
from danlu.boxes.polygon import polygon_iou

_TOL = 1e-6


def _random_rects(n: int, image_size: float, seed: int) -> np.ndarray:
    """``n`` rotated rectangles as ``[n, 4, 2]`` polygons inside an ``image_size`` square."""
    rng = np.random.default_rng(seed)
    boxes = np.stack([
        rng.uniform(0, image_size, n), rng.uniform(0, image_size, n),
        rng.uniform(10, 200, n), rng.uniform(10, 200, n), rng.uniform(-np.pi, np.pi, n),
    ], axis=1)
    return cxcywha_to_polygon(boxes)


def _iou_from_inter(inter: np.ndarray, area_a: np.ndarray, area_b: np.ndarray) -> np.ndarray:
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _shapely_pair_by_pair(pa: list, pb: list) -> np.ndarray:
    out = np.zeros((len(pa), len(pb)))
    for i, p in enumerate(pa):
        area_p = p.area
        for j, q in enumerate(pb):
            inter = p.intersection(q).area
            if inter > 0:
                out[i, j] = inter / (area_p + q.area - inter)
    return out


def _shapely_vectorized(ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
    inter = shapely.area(shapely.intersection(ga[:, None], gb[None, :]))
    return _iou_from_inter(inter, shapely.area(ga), shapely.area(gb))


def _shapely_strtree(ga: np.ndarray, gb: np.ndarray) -> np.ndarray:
    tree = shapely.STRtree(gb)
    i, j = tree.query(ga, predicate="intersects")
    inter = np.zeros((len(ga), len(gb)))
    inter[i, j] = shapely.area(shapely.intersection(ga[i], gb[j]))
    return _iou_from_inter(inter, shapely.area(ga), shapely.area(gb))


def _case_rows(name: str, a: np.ndarray, b: np.ndarray, quick: bool) -> list[Row]:
    ga, gb = shapely.polygons(a), shapely.polygons(b)
    pa, pb = list(ga), list(gb)
    polygon_iou(a[:2], b[:2])  # compile (or load the numba cache) outside the timing
    ours = polygon_iou(a, b)
    ours_s = measure(lambda: polygon_iou(a, b), repeat=5 if quick else 7)
    overlap = float((ours > 0).mean())
    case = f"{name} {len(a)}x{len(b)} ({overlap:.1%} pairs overlap)"
    rows = []
    peers = [
        ("shapely pair by pair", lambda: _shapely_pair_by_pair(pa, pb), 1, ">= 20x"),
        ("shapely.intersection ufunc", lambda: _shapely_vectorized(ga, gb), 3, ""),
        ("shapely STRtree + ufunc", lambda: _shapely_strtree(ga, gb), 5, ""),
    ]
    for peer, fn, repeat, goal in peers:
        result = fn()
        # the slow peers are timed once more after the run above, which served as warm-up
        peer_s = measure(fn, repeat=repeat, warmup=0)
        agree = bool(np.abs(result - ours).max() <= _TOL) if ours.size else True
        rows.append(Row(case=case, ours_s=ours_s, peer=peer, peer_s=peer_s, agree=agree,
                        goal=goal))
    return rows


def polygon_iou_rows(quick: bool = False) -> list[Row]:
    """Rows for ``polygon_iou`` on a sparse (4000 px) and a dense (500 px) scene.

    ``quick`` uses 200 boxes per side instead of 1000.
    """
    n = 200 if quick else 1000
    rows = []
    for name, size, seed in (("sparse 4000px", 4000.0, 0), ("dense 500px", 500.0, 2)):
        a = _random_rects(n, size, seed)
        b = _random_rects(n, size, seed + 1)
        rows += _case_rows(name, a, b, quick)
    return rows


if __name__ == "__main__":
    from benchmarks._common import report

    report("polygon IoU", polygon_iou_rows())
