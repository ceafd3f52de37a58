"""The service's model side without HTTP: a batch of requests with different options gives
each what the Predictor gives it alone; options are validated; the torch-free letterbox of the
decode pool equals the Predictor's."""

from __future__ import annotations

import numpy as np
import pytest
from tests._data_fixtures import train_tiny_checkpoint
from tests._serve_fixtures import encode, rows, same, scene

from danlu.serve.config import ServeConfig
from danlu.serve.engine import Engine
from danlu.serve.problems import RequestProblem


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return train_tiny_checkpoint(tmp_path_factory.mktemp("serve_engine"))


@pytest.fixture(scope="module")
def engine(ckpt):
    return Engine(ServeConfig(str(ckpt), device="cpu", score_threshold=0.05, max_batch=4))


def test_a_mixed_batch_equals_each_request_alone(engine):
    from danlu import Predictor

    images = [encode(scene(seed=s, size=(90 + 10 * s, 70))) for s in range(4)]
    asks = [engine.options(score_threshold=t, max_detections=m, classes=c)
            for t, m, c in ((0.05, None, None), (0.08, 3, None), (0.06, None, "0,2"),
                            (0.1, None, engine.class_names[1]))]
    items = [engine.prepare(data, opt) for data, opt in zip(images, asks, strict=True)]
    outs = engine.run_batch(items)
    assert len(outs) == 4 and all(o.infer_s > 0 for o in outs)
    for data, opt, out in zip(images, asks, outs, strict=True):
        alone = Predictor(engine.config.model, device="cpu",
                          score_threshold=opt.score_threshold)
        from danlu.infer.images import read_image

        det = alone.predict(read_image(data))
        if opt.labels is not None:
            det = det[np.isin(det.labels, sorted(opt.labels))]
        if opt.max_detections is not None:
            det = det[np.argsort(-det.scores, kind="stable")[: opt.max_detections]]
        assert same(rows(out.detections), rows(det), box_tol=0.02)


def test_options_are_validated(engine):
    o = engine.options()
    assert o.score_threshold == 0.05 and o.labels is None and o.slice_size is None
    assert engine.options(slice_size="auto").slice_size == "auto"
    assert engine.options(slice_size="640", overlap="0.3").slice_size == 640
    assert engine.options(classes=f"{engine.class_names[0]}, 1").labels == frozenset({0, 1})
    for kwargs in ({"score_threshold": "-0.1"}, {"score_threshold": "nan"},
                   {"max_detections": "1.5"}, {"classes": "99"}, {"slice_size": "8"},
                   {"overlap": "0.99"}):
        with pytest.raises(RequestProblem) as e:
            engine.options(**kwargs)
        assert e.value.status == 422


def test_torch_free_letterbox_equals_the_predictors(engine):
    t = engine.predictor.transform
    for shape in ((70, 90, 3), (64, 64, 3), (30, 200, 4), (50, 40)):
        img = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
        arr, frame = t.array(img)
        tensor, frame2 = t.image(img)
        assert frame == frame2 and arr.shape == (t.size, t.size, 3)
        assert np.array_equal(tensor.permute(1, 2, 0).numpy(), arr)


def test_describe_names_the_model(engine, ckpt):
    d = engine.describe()
    assert d["class_names"] == engine.class_names and d["input_size"] == 64
    assert d["backend"] == "torch" and len(d["checkpoint_sha256"]) == 64


def test_open_builds_on_its_own_thread(ckpt):
    import os
    import threading

    e = Engine.open(ServeConfig(str(ckpt), device="cpu", model_nice=5))
    try:
        assert e.thread is not None
        name = e.thread.submit(lambda: threading.current_thread().name).result()
        assert name.startswith("danlu-model")
        if hasattr(os, "getpriority"):  # the model thread runs 5 nice levels lower
            mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            tid = e.thread.submit(threading.get_native_id).result()
            assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, mine + 5)
    finally:
        e.thread.shutdown()
