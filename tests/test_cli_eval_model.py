"""``danlu eval MODEL --gt DATA`` (issue 11): one step, the AP training reported for best.pt,
the same numbers as ``danlu predict --multi-label`` then ``danlu eval --pred``, and classes
matched by name."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
from tests._cli import danlu as run_danlu

from danlu.cli._eval_model import class_mapping
from danlu.errors import ConfigError

danlu = functools.partial(run_danlu, timeout=900)  # trains or runs many commands


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_model")
    for name, seed in (("train", "0"), ("val", "1")):
        r = danlu("data", "synth", "--preset", "shapes", "--out", name, "--num-images", "12",
                  "--image-size", "96", "--scale", "16,40", "--seed", seed, cwd=root)
        assert r.returncode == 0, r.stderr
    r = danlu("train", "--data", "train", "--val", "val", "--epochs", "2", "--img-size", "96",
              "--batch", "4", "--name", "r", "--json", cwd=root)
    assert r.returncode == 0, r.stderr
    (root / "train.json").write_text(r.stdout)
    return root


def _best_val_ap(root: Path) -> float:
    from danlu.train.results import read_results

    aps = [float(row["AP"]) for row in read_results(root / "runs" / "r" / "results.csv")
           if row.get("AP")]
    assert aps, "training recorded no validation AP"
    return max(aps)


def test_eval_of_a_checkpoint_gives_the_ap_training_reported(run):
    r = danlu("eval", "runs/r/best.pt", "--gt", "val", "--json", cwd=run)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["AP"] == pytest.approx(_best_val_ap(run), abs=1e-4)


def test_eval_of_a_checkpoint_equals_predict_then_eval(run):
    r = danlu("predict", "runs/r/best.pt", "val/JPEGImages", "--out", "p", "--multi-label",
              "--score-threshold", "0.05", cwd=run)
    assert r.returncode == 0, r.stderr
    two_steps = danlu("eval", "--gt", "val", "--pred", "p", "--json", cwd=run)
    one_step = danlu("eval", "runs/r", "--gt", "val", "--json", cwd=run)  # a run folder works
    assert two_steps.returncode == 0 and one_step.returncode == 0, one_step.stderr
    a, b = json.loads(two_steps.stdout), json.loads(one_step.stdout)
    assert a["stats"] == pytest.approx(b["stats"], abs=1e-6)


def test_model_and_pred_are_exclusive(run):
    for args in ((), ("runs/r/best.pt", "--pred", "p")):
        r = danlu("eval", *args, "--gt", "val", cwd=run)
        assert r.returncode == 2 and "MODEL" in r.stderr and "Traceback" not in r.stderr


def test_classes_are_matched_by_name():
    mapping, foreign = class_mapping(["star", "circle", "kite"], ["circle", "star"])
    assert mapping.tolist() == [1, 0, -1] and foreign == ["kite"]
    assert class_mapping(["a"], ["a"])[0].tolist() == [0]
    with pytest.raises(ConfigError, match="share no name"):
        class_mapping(["cat"], ["dog"])
    assert isinstance(mapping, np.ndarray)
