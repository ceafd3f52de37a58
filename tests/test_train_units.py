"""Training blocks without a detector: config, schedule, EMA, sampler, data, checkpoints."""

from __future__ import annotations

import math
import pickle
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from danlu.errors import ConfigError, DatasetError, ModelError
from danlu.models.transform import InputTransform
from danlu.structures import Dataset, Detections, Sample
from danlu.train.checkpoint import (
    FORMAT,
    VERSION,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from danlu.train.config import TrainConfig
from danlu.train.data import DetectionDataset, EpochBatchSampler, collate
from danlu.train.ema import ModelEMA
from danlu.train.schedule import LRSchedule


# -- config -------------------------------------------------------------------------------------
def test_config_yaml_roundtrip_and_unknown_keys(tmp_path):
    cfg = TrainConfig(epochs=3, batch=4, img_size=128, schedule="step", time=1.5)
    cfg.save(tmp_path / "c.yaml")
    assert TrainConfig.load(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("epochs: 2\nno_such_option: 1\n")
    with pytest.raises(ConfigError, match="no_such_option"):
        TrainConfig.load(tmp_path / "bad.yaml")
    (tmp_path / "broken.yaml").write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        TrainConfig.load(tmp_path / "broken.yaml")
    # kebab-case keys are accepted, like the CLI options
    assert TrainConfig.from_dict({"img-size": 96}).img_size == 96


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"schedule": "linear"}, {"val_split": 1.0},
                                 {"augment": "heavy"}, {"ema_decay": 1.0}, {"time": -1}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


# -- schedule -----------------------------------------------------------------------------------
def test_schedule_warmup_cosine_and_step():
    s = LRSchedule(1.0, total_steps=100, warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    lrs = [s.lr(i) for i in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b + 1e-12 for a, b in zip(lrs[:10], lrs[1:10], strict=False))
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[100] == pytest.approx(0.1)
    step = LRSchedule(1.0, 100, 0, kind="step", milestones=[0.5, 0.8], gamma=0.1)
    assert [step.lr(i) for i in (0, 49, 50, 79, 80)] == pytest.approx([1, 1, .1, .1, .01])
    s2 = LRSchedule(0.5, 1, 0)
    s2.load_state_dict(s.state_dict())
    assert [s2.lr(i) for i in range(101)] == lrs


# -- EMA ----------------------------------------------------------------------------------------
def test_ema_follows_the_formula_and_restores():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEMA(m, decay=0.9, tau=2.0)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        m[0].weight.add_(1.0)
    m[1].num_batches_tracked += 5
    d = ema.current_decay()
    ema.update(m)
    assert d == pytest.approx(0.9 * (1 - math.exp(-1 / 2.0)))
    torch.testing.assert_close(ema.module[0].weight, d * before + (1 - d) * m[0].weight)
    assert int(ema.module[1].num_batches_tracked) == 5
    other = ModelEMA(m)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.module[0].weight, ema.module[0].weight)


# -- sampler ------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), batch=st.integers(1, 8), epoch=st.integers(0, 5),
       seed=st.integers(0, 2**31), start=st.integers(0, 10))
def test_sampler_resumes_mid_epoch_with_the_same_batches(n, batch, epoch, seed, start):
    full = EpochBatchSampler(n, batch, seed)
    full.set_epoch(epoch)
    batches = list(full)
    assert len(batches) == full.batches_per_epoch() == len(full)
    resumed = EpochBatchSampler(n, batch, seed=12345)
    resumed.load_state_dict({"seed": seed, "epoch": epoch, "start_batch": start})
    assert list(resumed) == batches[start:]
    seen = [i for b in batches for i in b]
    assert len(set(seen)) == len(seen)  # a permutation (possibly minus a dropped tail)


def test_sampler_epochs_differ_and_shards_cover():
    s = EpochBatchSampler(20, 4, seed=0)
    assert s.order(0).tolist() != s.order(1).tolist()
    shards = [EpochBatchSampler(10, 2, seed=0, rank=r, world_size=3).order(0) for r in range(3)]
    assert {len(x) for x in shards} == {4}
    assert set(np.concatenate(shards).tolist()) == set(range(10))


# -- data ---------------------------------------------------------------------------------------
def test_resize_and_unscale_roundtrip_on_a_wide_image():
    img = np.zeros((40, 100, 3), np.uint8)
    img[10:20, 30:60] = 255
    letterbox = InputTransform(50)
    tensor, frame = letterbox.image(img)
    assert tensor.shape == (3, 50, 50) and tensor.dtype == torch.uint8
    assert int(tensor[0, 45, 0]) == 114  # letterbox padding at the bottom
    det = Detections([[30, 10, 60, 20]], [0], scores=[0.9])
    back = letterbox.back(letterbox.boxes(det, frame), frame)
    np.testing.assert_allclose(back.xyxy, det.xyxy, atol=1e-4)
    assert letterbox.frame(100, 40) == frame  # the same frame without touching pixels
    t2, frame2 = InputTransform(64, "resize").image(img)
    assert t2.shape == (3, 64, 64) and frame2.scale == (0.64, 1.6)


def test_detection_dataset_drops_ignored_and_tiny_boxes_and_collates():
    det = Detections([[0, 0, 40, 40], [10, 10, 10.5, 30], [5, 5, 30, 30]], [0, 1, 1],
                     flags={"ignore": [False, False, True]})
    ds = Dataset([Sample(np.zeros((80, 80, 3), np.uint8), 80, 80, det, id="a")], ["x", "y"])
    item = DetectionDataset(ds, 40)[0]
    target = item["target"]
    assert target["boxes"].tolist() == [[0, 0, 20, 20]] and target["labels"].tolist() == [0]
    batch = collate([item, item])
    assert batch["images"].shape == (2, 3, 40, 40) and batch["indices"].tolist() == [0, 0]
    raw = DetectionDataset(ds, 40, train=False)[0]
    assert len(raw["target"]["boxes"]) == 3
    # the flags (and polygons) the data has travel with the boxes through collate
    assert batch["targets"][0]["ignore"].tolist() == [False]
    assert raw["target"]["ignore"].tolist() == [False, False, True]


# -- checkpoints --------------------------------------------------------------------------------
def _ckpt(**extra):
    return {"format": FORMAT, "version": VERSION, "model": {"w": torch.arange(3.0)},
            "model_config": {"name": "x", "num_classes": 2}, "class_names": ["a", "b"],
            "img_size": 64, **extra}


def test_checkpoint_roundtrip_is_weights_only_and_atomic(tmp_path):
    path = tmp_path / "a.pt"
    save_checkpoint(_ckpt(train={"rng": rng_state(), "epoch": 1}), path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]  # no temporary left behind
    ck = load_checkpoint(path)
    assert ck["model"]["w"].tolist() == [0, 1, 2]
    torch.load(path, weights_only=True)  # nothing but tensors and primitive containers


def test_checkpoint_rejects_foreign_and_malicious_files(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="not a danlu checkpoint"):
        load_checkpoint(tmp_path / "other.pt")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(_ckpt(x=Evil()), f, protocol=2)
    with pytest.raises(ModelError):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_roundtrip(tmp_path):
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002 - the global state is what checkpoints save
    torch.manual_seed(3)
    save_checkpoint(_ckpt(rng=rng_state()), tmp_path / "r.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected  # noqa: NPY002


def test_trainer_rejects_bad_data():
    from danlu.train.trainer import Trainer

    with pytest.raises(DatasetError, match="empty"):
        Trainer(TrainConfig(), Dataset([], ["a"]), run_dir="unused")
    ds = Dataset([Sample(np.zeros((8, 8, 3), np.uint8), 8, 8)], ["a"])
    with pytest.raises(DatasetError, match="differ"):
        Trainer(TrainConfig(), ds, Dataset(ds.samples, ["b"]), run_dir="unused")


def _cost(steps: int, step_s: float, val_s: float, per_epoch: int) -> float:
    """Oracle: seconds for ``steps`` steps when every started epoch ends with a validation."""
    return steps * step_s + -(-steps // per_epoch) * val_s


@settings(max_examples=300)
@given(st.floats(0, 500), st.floats(0.01, 5), st.floats(0, 20), st.integers(1, 30))
def test_steps_that_fit_is_the_most_that_fit(seconds, step_s, val_s, per_epoch):
    from danlu.train.callbacks import steps_that_fit

    n = steps_that_fit(seconds, step_s, val_s, per_epoch)
    tol = 1e-6  # float rounding at an exact boundary may go either way
    assert n >= 0
    assert _cost(n, step_s, val_s, per_epoch) <= seconds + tol
    assert _cost(n + 1, step_s, val_s, per_epoch) > seconds - tol


class _ClockTrainer:
    """The parts of a Trainer that TimeBudget reads, on a fake clock."""

    def __init__(self, epochs: int, per_epoch: int) -> None:
        from types import SimpleNamespace

        from danlu.train.schedule import LRSchedule

        self.config = SimpleNamespace(epochs=epochs)
        self.batches_per_epoch = self.epoch_batches = per_epoch
        self.schedule = LRSchedule(1.0, epochs * per_epoch)
        self.total_epochs, self.epoch, self.step, self.batch_in_epoch = epochs, 0, 0, 0
        self.clock, self.stop_reason, self.events = 0.0, None, []

    def elapsed_now(self) -> float:
        return self.clock

    def event(self, kind: str, **kw) -> None:
        self.events.append(kind)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    def replan(self, total_steps: int, total_epochs: int, **why) -> None:
        """The seam TimeBudget plans through (Trainer.replan)."""
        self.total_epochs, self.schedule.total_steps = total_epochs, total_steps


def test_time_budget_plans_growing_and_cuts_the_last_epoch():
    from danlu.train.callbacks import TimeBudget

    tb = TimeBudget(minutes=1.0)  # 60 s; 10 steps of 1 s + 2 s validation per epoch
    t = _ClockTrainer(epochs=100, per_epoch=10)
    t.step, t.clock = 10, 30.0  # a slow first epoch (warm-up): 28 s of steps, 2 s validation
    tb.on_epoch_end(t, {"epoch_time": 30.0, "val_time": 2.0})
    # 30 s * 0.98 planned: no full epoch of 2.8 s steps, but 9 steps and a validation
    assert t.total_epochs == 2 and t.schedule.total_steps == 19
    t.epoch, t.step, t.clock = 1, 20, 42.0  # the second epoch ran at speed: 10 + 2 s
    tb.on_epoch_end(t, {"epoch_time": 12.0, "val_time": 2.0})
    # the plan grows: 18 s * 0.98 left, one full epoch (12 s), then 3 steps and a validation
    assert t.total_epochs == 4 and t.schedule.total_steps == 33
    t.epoch, t.step, t.batch_in_epoch = 3, 32, 2
    tb.on_step(t, {})
    assert t.stop_reason is None
    t.step, t.batch_in_epoch = 33, 3
    tb.on_step(t, {})
    assert t.stop_reason == "time"  # the partial last epoch ends at the planned step

    t = _ClockTrainer(epochs=3, per_epoch=10)  # the epochs cap wins over a roomy budget
    t.step, t.clock = 10, 12.0
    tb.on_epoch_end(t, {"epoch_time": 12.0, "val_time": 2.0})
    assert t.total_epochs == 3 and t.schedule.total_steps == 30 and t.stop_reason is None
    t.epoch, t.step, t.clock = 2, 30, 36.0
    tb.on_epoch_end(t, {"epoch_time": 12.0, "val_time": 2.0})
    assert t.stop_reason is None  # the run completes: it did not run out of time

    t = _ClockTrainer(epochs=100, per_epoch=10)  # nothing more fits
    t.step, t.clock = 10, 59.0
    tb.on_epoch_end(t, {"epoch_time": 12.0, "val_time": 2.0})
    assert t.stop_reason == "time"


@pytest.mark.parametrize("mode", ["letterbox", "resize"])
def test_training_box_sizes_in_model_pixels_from_a_dataset_and_its_pack(tmp_path, mode):
    from danlu.data.pack import PackedDataset, pack_dataset
    from danlu.train.data import training_box_sizes

    flags = {"iscrowd": np.array([False, True, False])}
    det = Detections(np.array([[0, 0, 40, 20], [5, 5, 10, 10], [10, 30, 70, 90]], np.float32),
                     np.array([0, 0, 1]), flags=flags)
    wide = Sample(np.zeros((100, 200, 3), np.uint8), 200, 100, det, id="wide")
    ds = Dataset([wide], ["a", "b"])
    got = training_box_sizes(ds, 100, mode)
    sx, sy = (0.5, 0.5) if mode == "letterbox" else (0.5, 1.0)  # the crowd box is left out
    np.testing.assert_allclose(got, [[40 * sx, 20 * sy], [60 * sx, 60 * sy]])
    pk = PackedDataset(pack_dataset(ds, tmp_path / "d.pack", 50, mode=mode))
    np.testing.assert_allclose(training_box_sizes(pk, 100, mode), got, rtol=1e-5)


def test_input_size_follows_the_data_within_bounds(tmp_path):
    from danlu.data.pack import PackedDataset, pack_dataset
    from danlu.train.data import input_size_for

    def sized(*sides):
        return Dataset([Sample(np.zeros((h, w, 3), np.uint8), w, h, id=i)
                        for i, (w, h) in enumerate(sides)], ["a"])

    assert input_size_for(sized((500, 375), (640, 480), (333, 500))) == 512  # median 500
    assert input_size_for(sized((300, 200), (310, 200))) == 320  # 305 -> nearest 32
    assert input_size_for(sized((40, 30))) == 128  # thumbnails: the floor
    assert input_size_for(sized((12000, 9000))) == 1024  # huge scenes: the cap (tile them)
    pk = PackedDataset(pack_dataset(sized((64, 48)), tmp_path / "p.pack", 96))
    assert input_size_for(pk) == 96  # a pack is already sized
    with pytest.raises(ConfigError, match="no images"):
        input_size_for(Dataset([], ["a"]))
    assert TrainConfig.from_dict({"img_size": "auto"}).img_size == "auto"
    with pytest.raises(ConfigError, match="img-size"):
        TrainConfig.from_dict({"img_size": "big"})
