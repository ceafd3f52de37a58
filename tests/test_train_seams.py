"""The trainer's decisions live in seams: the validator follows the data (DOTA for oriented
boxes), the best-checkpoint rule is configurable, early stopping owns its counter, callbacks of
one class keep separate state through a resume, and the time budget re-plans via ``replan``."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

import danlu
from danlu.data.io import load_dataset, save_dataset
from danlu.data.synth import synthesize
from danlu.errors import ConfigError
from danlu.models.checkpoint import load_checkpoint
from danlu.structures import Dataset, Detections, Sample
from danlu.train.callbacks import Callback, EarlyStopping, state_keys
from danlu.train.config import TrainConfig
from danlu.train.results import read_results, split_columns
from danlu.train.trainer import Trainer
from danlu.train.validation import BestRule, protocol_for

TINY = dict(model="fcos-tiny", batch=4, img_size=64, device="cpu", seed=0, plots=False,
            verbose=False, progress=False, augment="none")


def _shapes(n=12, seed=5):
    return synthesize("shapes", num_images=n, seed=seed, image_size=(64, 64),
                      scale_range=(12, 28), encode=False)


def _oriented(ds: Dataset) -> Dataset:
    """Every box as a 4-point polygon, slightly rotated about its centre."""
    samples = []
    for s in ds.samples:
        d = s.detections
        c = (d.xyxy[:, :2] + d.xyxy[:, 2:]) / 2
        half = (d.xyxy[:, 2:] - d.xyxy[:, :2]) / 2
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float32)
        a = np.deg2rad(10.0)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]], np.float32)
        poly = c[:, None] + (corners[None] * half[:, None] * 0.8) @ rot.T
        samples.append(Sample(s.image, s.width, s.height,
                              Detections(None, d.labels, polygons=poly), id=s.id))
    return Dataset(samples, ds.class_names)


def test_a_dota_dataset_trains_and_validates_with_the_dota_protocol(tmp_path):
    root = save_dataset(_oriented(_shapes()), tmp_path / "dota", "dota")
    data = load_dataset(root, "dota")
    assert protocol_for(data) == "dota"
    out = tmp_path / "run"
    result = danlu.train(data, epochs=1, out=out, val_split=0.25, **TINY)
    metrics = orjson.loads((out / "eval" / "metrics.json").read_bytes())
    assert metrics["protocol"] == "dota" and "mAP" in result.metrics
    rows = read_results(out / "results.csv")
    assert "mAP" in rows[0] and "AP" not in rows[0]
    losses, metrics = split_columns(list(rows[0]))  # loss.png plots mAP as a metric
    assert metrics == ["mAP"] and "loss" in losses and "mAP" not in losses
    best = [e for e in map(orjson.loads, (out / "history.jsonl").read_bytes().splitlines())
            if e["event"] == "best"]
    assert best and best[0]["metric"] == "mAP"
    # overridden: the same data judged by COCO on the enclosing boxes
    coco = danlu.train(data, epochs=1, out=tmp_path / "coco", val_split=0.25,
                       val_protocol="coco", final_eval=False, **TINY)
    assert "AP" in coco.metrics or coco.best_fitness is not None
    assert "AP" in read_results(tmp_path / "coco" / "results.csv")[0]


def test_best_rule():
    rule = BestRule.for_protocol("voc12")
    assert rule.metric == "mAP" and rule.improves(0.1, None) and not rule.improves(0.1, 0.2)
    low = BestRule("loss", "min")
    assert low.improves(0.1, 0.2) and not low.improves(float("nan"), 0.2)
    with pytest.raises(ConfigError, match="not among"):
        BestRule("AP99").value({"AP": 0.5})
    with pytest.raises(ConfigError):
        TrainConfig(best_mode="up")
    with pytest.raises(ConfigError):
        TrainConfig(val_protocol="imagenet")


class StepCounter(Callback):
    """Counts steps from ``start``; its count is resumable state."""

    def __init__(self, start: int) -> None:
        self.count = start

    def on_step(self, trainer, logs):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def test_two_callbacks_of_one_class_keep_separate_state(tmp_path):
    data = _shapes()
    out = tmp_path / "run"
    a, b = StepCounter(0), StepCounter(100)
    danlu.train(data, epochs=2, out=out, val_split=0, max_steps=3, callbacks=[a, b],
                final_eval=False, **TINY)
    assert (a.count, b.count) == (3, 103)
    saved = load_checkpoint(out / "last.pt")["train"]["callbacks"]
    assert saved["StepCounter"] == {"count": 3} and saved["StepCounter#2"] == {"count": 103}
    a2, b2 = StepCounter(-1), StepCounter(-1)
    result = danlu.train(data, resume=out, callbacks=[a2, b2], max_steps=0, verbose=False,
                         progress=False)
    assert result.steps == 6 and (a2.count, b2.count) == (6, 106)
    assert state_keys([a2, b2, EarlyStopping(1)]) == ["StepCounter", "StepCounter#2",
                                                      "EarlyStopping"]


def test_early_stopping_owns_its_counter_and_resumes_it(tmp_path):
    cb = EarlyStopping(2)

    class Fake:
        def __init__(self):
            self.evaluated, self.improved, self.best_fitness, self.stopped = True, False, 0.5, None

        def event(self, *a, **k):
            pass

        def request_stop(self, reason):
            self.stopped = reason

    t = Fake()
    cb.on_epoch_end(t, {})
    assert cb.bad_evaluations == 1 and t.stopped is None
    t.evaluated = False  # an epoch without validation does not count
    cb.on_epoch_end(t, {})
    assert cb.bad_evaluations == 1
    restored = EarlyStopping(2)
    restored.load_state_dict(cb.state_dict())
    t.evaluated = True
    restored.on_epoch_end(t, {})
    assert t.stopped == "early_stopping"
    t.improved, t.stopped = True, None
    restored.on_epoch_end(t, {})
    assert restored.bad_evaluations == 0 and t.stopped is None


def test_replan_changes_the_length_and_writes_history(tmp_path):
    trainer = Trainer(TrainConfig(epochs=3, batch=4, img_size=64, device="cpu"), _shapes(8),
                      run_dir=tmp_path / "run", verbose=False, progress=False)
    trainer.setup()
    total = trainer.schedule.total_steps
    trainer.replan(total + 4, 4, reason="time_budget", remaining=1.0)
    assert trainer.total_epochs == 4 and trainer.schedule.total_steps == total + 4
    events = [orjson.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_bytes()
              .splitlines()]
    assert events[-1]["event"] == "time_budget" and events[-1]["was"] == 3
    trainer.close()
