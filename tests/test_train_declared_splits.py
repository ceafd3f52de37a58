"""``danlu train --data DIR`` on a dataset that declares its splits (a YOLO ``data.yaml`` with
``train:`` and ``val:``) trains on train and validates on val, and says so (issue 12): it
used to merge both and cut its own random 10%, training on the user's validation images."""

from __future__ import annotations

import subprocess
import sys

from danlu.data.io import load_dataset, save_dataset
from danlu.data.synth import synthesize
from danlu.structures import Dataset, Sample
from danlu.train.api import declared_splits


def _with_splits(n: int, splits: list[str]) -> Dataset:
    ds = synthesize("shapes", num_images=n, seed=4, image_size=(64, 64), scale_range=(12, 28))
    samples = [Sample(s.image, s.width, s.height, s.detections, id=s.id,
                      meta={**s.meta, "split": splits[i % len(splits)]})
               for i, s in enumerate(ds.samples)]
    return Dataset(samples, ds.class_names)


def test_the_declared_splits_are_used(tmp_path):
    save_dataset(_with_splits(9, ["train", "train", "val"]), tmp_path / "y", "yolo")
    ds = load_dataset(tmp_path / "y")
    train, val, said = declared_splits(ds, with_val=False)
    truth = {s.id: s.meta["split"] for s in ds.samples}
    assert {truth[s.id] for s in train.samples} == {"train"} and len(train) == 6
    assert {truth[s.id] for s in val.samples} == {"val"} and len(val) == 3
    assert "training on split 'train' (6 images), validating on split 'val' (3 images)" in said


def test_a_given_val_set_and_a_test_split():
    ds = _with_splits(8, ["train", "valid", "test", "train"])
    train, val, said = declared_splits(ds, with_val=True)  # --val given: only train is cut
    assert len(train) == 4 and val is None
    assert "not used: 'valid' (2), 'test' (2)" in said
    plain = _with_splits(4, ["train"])  # one split: nothing to choose
    assert declared_splits(plain, with_val=False) == (plain, None, None)


def test_the_cli_says_which_split_is_used_for_what(tmp_path):
    save_dataset(_with_splits(6, ["train", "val"]), tmp_path / "y", "yolo")
    r = subprocess.run([sys.executable, "-m", "danlu", "train", "--data", "y", "--epochs", "1",
                        "--img-size", "64", "--batch", "2", "--max-steps", "1", "--name", "r",
                        "--no-plots", "--no-final-eval"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "training on split 'train' (3 images), validating on split 'val' (3 images)" \
        in r.stderr
