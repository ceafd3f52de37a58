"""`danlu bench predict`: every piece runs on tiny inputs and gives rows whose agree flags are
real booleans (no timing is asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("sahi")
pytest.importorskip("pycocotools")
pytest.importorskip("tifffile")

from benchmarks import _predict_scene as scene_mod  # noqa: E402
from benchmarks import predict as bench  # noqa: E402
from benchmarks._common import MetricRow, Row  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    import danlu
    from danlu.data.synth import synthesize

    ds = synthesize("shapes", num_images=8, seed=2, image_size=(64, 64), scale_range=(12, 28),
                    encode=False)
    out = tmp_path_factory.mktemp("bench_predict") / "run"
    danlu.train(ds, epochs=1, out=out, batch=4, img_size=64, device="cpu", val_split=0,
                plots=False, verbose=False)
    return out / "best.pt"


@pytest.fixture(scope="module")
def scene():
    return scene_mod.build_scene(600, 300, (3, 4))


def _check(rows, kinds):
    assert rows and all(isinstance(r, kinds) for r in rows)
    for r in rows:
        if isinstance(r, Row):
            assert isinstance(r.agree, bool) and r.ours_s > 0 and r.peer_s > 0 and r.goal != "x"


def test_scene_is_a_mosaic_with_its_ground_truth():
    image, gt = scene_mod.build_scene(600, 300, (3, 4))
    assert image.shape == (600, 600, 3) and image.dtype == np.uint8
    assert 12 <= len(gt) <= 16 and (gt.xyxy[:, 2:] <= 600).all()
    assert set(gt.labels.tolist()) <= {0, 1, 2, 3}


def test_sliced_rows_compare_ours_sahi_and_the_plain_loop(ckpt, scene):
    image, gt = scene
    rows, info = bench.sliced_rows(ckpt, image, gt, quick=True)
    timing = [r for r in rows if isinstance(r, Row)]
    metrics = [r for r in rows if isinstance(r, MetricRow)]
    assert len(timing) == 6 and len(metrics) == 6
    _check(timing, Row)
    assert any("SAHI" in r.peer for r in timing)
    assert all({"AP50", "AP"} <= set(m.metrics) for m in metrics)
    assert sum(m.reference for m in metrics) == 1
    # same boxes as the plain loop once the cut-box rule is off: the comparison is real
    assert timing[3].agree is True


def test_batch_merge_folder_and_nms_rows(ckpt, scene):
    from danlu.infer.predictor import Predictor
    from danlu.infer.slicing import sliced_predict

    image, _ = scene
    _check(bench.batch_rows(ckpt, image, quick=True), Row)
    b16 = sliced_predict(Predictor(ckpt, device="cpu", score_threshold=bench.SCORE,
                                   batch_size=16), image, slice_size=256,
                         merge=bench._merges()["hard"])
    (whole,) = bench.batch_rows(ckpt, image, quick=True, b16=(1.0, b16))
    assert "whole" in whole.case and whole.agree in (True, False)
    merge = bench.merge_rows(quick=True, n=2000)
    _check(merge, Row)
    assert len(merge) == 4 and all(r.agree for r in merge)
    _check(bench.folder_rows(ckpt, quick=True, n=3), Row)
    nms = bench.nms_method_rows(ckpt, quick=True)
    assert {r.method for r in nms} == {"hard", "soft-linear", "soft-gaussian", "iou-guided",
                                       "hard, no TTA (whole prediction)",
                                       "hard + TTA (flip, 0.83x, 1.25x; WBF)"}
    assert all(0.0 <= r.metrics["AP50"] <= 1.0 for r in nms)


def test_memory_rows_run_each_tool_in_a_child(ckpt, scene, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DANLU_BENCH_CACHE", str(tmp_path))
    image, _ = scene
    rows = bench.memory_rows(ckpt, image, quick=True, side=1500)
    assert len(rows) == 1
    r = rows[0]
    assert r.ours_mb > 0 and "OURS FAILED" not in r.note
    assert r.peer_mb is None or r.peer_mb > 0
    bench.report(rows + bench.merge_rows(quick=True, n=500))
    bench.report(rows, as_json=True)
    out = capsys.readouterr().out
    assert "peak resident memory" in out and '"memory"' in out


def test_box_matching():
    from danlu.structures import Detections

    a = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1], scores=[0.9, 0.8])
    b = Detections([[20, 20, 30, 30], [0, 0, 10, 10.01]], [1, 0], scores=[0.8, 0.9])
    assert bench.same_boxes(a, b)
    assert not bench.same_boxes(a, Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0],
                                              scores=[0.9, 0.8]))
    assert bench.match_count(a, b[:1]) == 1


def test_a_disagreement_names_the_boxes_only_one_side_has():
    from danlu.structures import Detections

    a = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1], scores=[0.9, bench.SCORE + 1e-7])
    b = Detections([[0, 0, 10, 10]], [0], scores=[0.9])
    assert bench.why_not(a, a) == ""
    note = bench.why_not(a, b)
    assert "1 box" in note and "score threshold" in note
